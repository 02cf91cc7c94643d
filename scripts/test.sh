#!/usr/bin/env bash
# The suite: lint, then unit tests, then integration tests on real components.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/lint.sh
exec .venv/bin/python -m pytest -q "$@"
