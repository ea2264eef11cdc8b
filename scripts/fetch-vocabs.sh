#!/usr/bin/env bash
# Fetches the vocabulary-only GGUF files that llama.cpp tests its tokenizers
# with, and their reference tokenisations, for lastmile's tokenizer tests
# (issue #14: SentencePiece, Llama 3, Qwen2, DeepSeek Coder and LLM, and the
# GPT-2 family).
#
# llama.cpp keeps them in its `models/` folder as ggml-vocab-<name>.gguf
# (the vocabulary, merges or scores, special tokens; no weights) beside
# ggml-vocab-<name>.gguf.inp (test strings) and .gguf.out (the ids the
# model's Hugging Face tokenizer gives for them, without special tokens).
# The source distribution of llama-cpp-python 0.3.36 on PyPI vendors that
# folder: this script downloads it with pip (no dependencies, not built,
# nothing installed), checks its sha256 and unpacks the members below.
#
# Destination:
#   ${LASTMILE_MODELS:-${CARGO_TARGET_DIR:-<repo>/target}/lastmile-models}/llama-cpp-vocabs/
# (~37 MB). Idempotent: when every file is there, it only says so. Needs
# python3 with pip, network access to PyPI, and sha256sum or shasum.
# Usage: scripts/fetch-vocabs.sh
set -euo pipefail

PACKAGE="llama-cpp-python==0.3.36"
SDIST="llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
PREFIX="llama_cpp_python-0.3.36/vendor/llama.cpp/models"
# The vocabularies whose tokenizer lastmile implements.
NAMES="llama-spm phi-3 llama-bpe qwen2 gpt-2 mpt starcoder refact command-r deepseek-coder deepseek-llm"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models="${LASTMILE_MODELS:-${CARGO_TARGET_DIR:-$repo/target}/lastmile-models}"
dest="$models/llama-cpp-vocabs"

members=()
missing=0
for name in $NAMES; do
    for ext in gguf gguf.inp gguf.out; do
        members+=("$PREFIX/ggml-vocab-$name.$ext")
        [ -f "$dest/ggml-vocab-$name.$ext" ] || missing=1
    done
done
if [ "$missing" = 0 ]; then
    echo "present: $dest (${#members[@]} files)"
    exit 0
fi

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "downloading the $PACKAGE source distribution from PyPI ..."
# Only this package as source (its build tools may come as wheels: pip
# reads the sdist's metadata with them; nothing is compiled).
python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python "$PACKAGE" -d "$tmp"
got="$(sha256_of "$tmp/$SDIST")"
if [ "$got" != "$SDIST_SHA256" ]; then
    echo "error: $SDIST has sha256 $got, expected $SDIST_SHA256" >&2
    exit 1
fi

mkdir -p "$dest"
tar -xzf "$tmp/$SDIST" -C "$tmp" "${members[@]}"
for m in "${members[@]}"; do
    mv "$tmp/$m" "$dest/"
done
echo "fetched: $dest (${#members[@]} files)"
