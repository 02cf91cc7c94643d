#!/usr/bin/env bash
# The main job on the embedded defaults: real Redis, local-directory storage, the
# tiny random-weight model on the CPU build of vLLM. Leaves the stack running
# (make down stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
export BATCHSVC_URL=${BATCHSVC_URL:-http://127.0.0.1:${PORT:-8000}}

.venv/bin/python scripts/stack.py up
# The admin key `up` installed makes a submitter key for the demo tenant; the job runs as that.
(umask 077 && BATCHSVC_API_KEY=${BATCHSVC_BOOTSTRAP_API_KEY:-$(cat var/bootstrap-api-key)} \
    .venv/bin/batchsvc keys create --tenant demo --role submitter --name "make demo" > var/demo-api-key)
export BATCHSVC_API_KEY=$(cat var/demo-api-key)
echo
echo "==> submitting examples/candidates.jsonl ($(wc -l < examples/candidates.jsonl) candidates) to $BATCHSVC_URL"
JOB=$(.venv/bin/batchsvc submit examples/candidates.jsonl --model tiny-random --name demo-candidates)
echo "    job $JOB"
.venv/bin/batchsvc status "$JOB" --wait || true
mkdir -p var/demo
.venv/bin/batchsvc results "$JOB" -o "var/demo/$JOB-results.jsonl" --errors "var/demo/$JOB-errors.jsonl"
echo
echo "==> results: var/demo/$JOB-results.jsonl (also at GET $BATCHSVC_URL/v1/batch/$JOB/results)"
echo "==> a few scored candidates (random weights: the scores are noise, the JSON is real):"
.venv/bin/python - "var/demo/$JOB-results.jsonl" <<'PY'
import json, sys
with open(sys.argv[1]) as fh:
    for _, line in zip(range(5), fh):
        row = json.loads(line)
        body = row["response"]["body"]
        print(f"  {row['custom_id']}: {body['choices'][0]['message']['content']}")
PY
echo
echo "The stack keeps running: API $BATCHSVC_URL, Flower http://127.0.0.1:5555, logs in var/log/. Stop it with: make down"
echo "Its API keys: the demo tenant's submitter key in var/demo-api-key, the admin key in var/bootstrap-api-key"
echo "(or BATCHSVC_BOOTSTRAP_API_KEY). Try: BATCHSVC_API_KEY=\$(cat var/demo-api-key) .venv/bin/batchsvc list"
