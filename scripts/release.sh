#!/usr/bin/env bash
# `make release`: the Python sdist and wheel in dist/ (or OUTDIR), checked with `twine check`.
#   scripts/release.sh [OUTDIR]
# What a registry pipeline publishes (twine upload dist/*) after .ci/run is green.
# The images are built from the same tree: docker build --target cpu|gpu (Dockerfile).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-dist}
rm -rf "$OUT"
# --no-isolation: build with the venv's setuptools, no second download.
.venv/bin/python -m build --no-isolation --sdist --wheel --outdir "$OUT" .
.venv/bin/twine check --strict "$OUT"/*
