#!/usr/bin/env bash
# Ruff (lint and format) on everything, mypy on the framework-free core.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy batchsvc
