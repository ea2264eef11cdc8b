#!/usr/bin/env bash
# The Flower end-to-end test (issue 15), as CI runs it:
#   1. a venv (default target/flower-venv, reused when present) with the pinned
#      bindings/python/requirements.txt (flwr, maturin, numpy);
#   2. `maturin develop` of the lastmile_fl extension (cargo's dev profile, in
#      cargo's target dir);
#   3. the extension's unit tests (bindings/python/tests/test_*.py);
#   4. bindings/python/tests/flower_deployment.py: SuperLink + SuperNodes on
#      loopback, `flwr run`, checks against lastmile_fl.simulate.
# Each step prints its wall time.
#
# Usage: scripts/flower-e2e.sh [strategy] [more test arguments...]
#   FLOWER_VENV  venv directory (default target/flower-venv)
#   PYTHON       interpreter that creates the venv (default python3, needs >= 3.11 and venv)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${FLOWER_VENV:-target/flower-venv}
PYTHON=${PYTHON:-python3}
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac

step() {
    local name=$1
    shift
    echo
    echo "=== ${name}: $*"
    local start=$SECONDS
    "$@"
    echo "=== ${name} done in $((SECONDS - start)) s"
}

make_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
            { echo "flower-e2e: $PYTHON is older than 3.11 (flwr 1.42 needs >= 3.11)" >&2; return 1; }
        "$PYTHON" -m venv "$VENV" ||
            { echo "flower-e2e: '$PYTHON -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2; return 1; }
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r bindings/python/requirements.txt
    "$VENV/bin/python" -m pip freeze --disable-pip-version-check | grep -E '^(flwr|maturin|numpy)=='
}

build_extension() {
    # maturin installs into the venv named by VIRTUAL_ENV; no --release: the dev profile.
    VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" \
        "$VENV/bin/maturin" develop --locked --manifest-path bindings/python/Cargo.toml
    "$VENV/bin/python" -c 'import lastmile_fl; print("lastmile_fl from", lastmile_fl.__file__)'
}

unit_tests() {
    "$VENV/bin/python" -m unittest discover -s bindings/python/tests -p "test_*.py"
}

run_test() {
    "$VENV/bin/python" bindings/python/tests/flower_deployment.py "$@"
}

step "flower-venv" make_venv
step "flower-build" build_extension
step "flower-unit" unit_tests
step "flower-e2e" run_test "$@"
