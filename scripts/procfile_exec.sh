#!/usr/bin/env bash
# Run one Procfile entry in the foreground, as the process itself (exec): the
# container images' entrypoint. A container so runs exactly the command that
# `make up` and a plain host run; only the environment differs.
#
#   scripts/procfile_exec.sh NAME   NAME: web, cpu, worker, beat, flower
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: scripts/procfile_exec.sh NAME (a Procfile entry)}
line=$(grep -E "^${name}:" Procfile) || { echo "Procfile has no entry named ${name}" >&2; exit 2; }
exec bash -c "exec ${line#*:}"
