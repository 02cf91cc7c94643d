#!/usr/bin/env bash
# Everything `make demo` and `make test` need on a fresh machine: the venv with
# pinned dependencies (scripts/install.sh), a running Redis, the tiny test model,
# and the Compose specification's schema for tests/deploy. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

# The venv and the Python dependencies: the same script the container images run.
scripts/install.sh cpu,test,dev
VENV=.venv

apt_install() {  # PACKAGE: from Debian, as root or through sudo
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "$1" >/dev/null
}

redis_up() {  # PING over bash's /dev/tcp, so no redis-cli is needed to ask
    ( exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && read -t 2 -r reply <&3 && [[ $reply == +PONG* ]] ) 2>/dev/null
}

if ! redis_up; then
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "==> installing redis-server"
        apt_install redis-server
    fi
    echo "==> starting redis-server on 127.0.0.1:6379"
    mkdir -p var/redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --dir "$PWD/var/redis" \
        --appendonly yes --appendfsync everysec --maxmemory-policy noeviction \
        --logfile "$PWD/var/redis/redis.log"
    for _ in $(seq 50); do redis_up && break; sleep 0.1; done
fi

# Prometheus and promtool: the alert rules are checked and unit-tested with them, and the
# observability tests scrape a test stack with a real Prometheus.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    echo "==> installing prometheus (server and promtool)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq prometheus >/dev/null
fi

"$VENV/bin/python" scripts/make_tiny_model.py
"$VENV/bin/python" scripts/make_tiny_model.py --variant tiny-random-2k  # the second test model (hot-swap, routing)

# nginx: tests/deploy run the deployments' reverse proxy config for real.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "==> installing nginx"
    apt_install nginx-light
fi

# The Compose specification's JSON schema, as Docker's docker-compose 1.x wheel ships it:
# tests/deploy validate docker-compose.yml against it. Downloaded only, never installed
# (its dependencies are older than ours); the version is pinned in constraints.txt.
if ! ls var/cache/docker_compose-*.whl >/dev/null 2>&1; then
    echo "==> downloading the Compose specification schema (docker-compose wheel)"
    "$VENV/bin/pip" download -q --no-deps -c constraints.txt -d var/cache docker-compose
fi
