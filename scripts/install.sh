#!/usr/bin/env bash
# Install batchsvc and its pinned dependencies into a virtualenv: the one install
# step that `make test` (through scripts/setup.sh) and the container images
# (docker/*.Dockerfile) share, so the two cannot drift.
#
#   scripts/install.sh [EXTRAS]   EXTRAS of setup.cfg, comma-separated (default cpu,test,dev)
#
#   VENV    where the virtualenv goes (default .venv)
#   PYTHON  the interpreter that makes it (default python3)
#
# The package is installed editable: the code reads configs/ and scripts/ from the
# source tree (batchsvc/settings.py PROJECT_ROOT), so the tree is the installation.
# Reinstalls only when the dependency files or the extras change. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS=${1:-cpu,test,dev}
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP=$VENV/.installed

if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

WANT=$( (cat setup.cfg constraints.txt pyproject.toml; echo "$EXTRAS") | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    exit 0
fi
echo "==> installing batchsvc[$EXTRAS] (the engine brings torch; takes a few minutes the first time)"
"$VENV/bin/pip" install -q --upgrade pip wheel
"$VENV/bin/pip" install -q -c constraints.txt -e ".[$EXTRAS]"
if [[ ",$EXTRAS," == *,cpu,* ]]; then
    # The PyPI builds of these do not match the CPU torch, and `import vllm` then fails.
    "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
echo "$WANT" > "$STAMP"
