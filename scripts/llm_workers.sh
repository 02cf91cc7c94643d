#!/usr/bin/env bash
# Start the LLM workers of this host: one Celery worker per visible GPU, each pinned
# with CUDA_VISIBLE_DEVICES and named llm-gpuN@host; on a host without GPUs, one
# worker named llm-cpu@host. Each runs --pool solo (vLLM may start its own
# processes), takes one shard at a time, and keeps its model warm.
#
#   BATCHSVC_WORKER_MODELS  comma-separated model aliases this host serves
#                           (default: qwen3-4b with GPUs, tiny-random without)
#   BATCHSVC_GPU_MODELS     per-GPU models instead, e.g. "0:qwen3-4b 1:llama-3.2-1b,gemma-3-4b";
#                           a GPU it does not name serves BATCHSVC_WORKER_MODELS
#   BATCHSVC_METRICS_PORT   the first worker's Prometheus port (default 9102); the
#                           worker of GPU N serves on that port + N; 0 turns them off
#
# A worker loads the first model of its list at start and consumes the queues of all
# of them; `batchsvc workers swap` moves it to another model later without a restart.
set -euo pipefail
cd "$(dirname "$0")/.."
CELERY=${CELERY:-.venv/bin/celery}

if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    IFS=',' read -r -a GPUS <<< "$CUDA_VISIBLE_DEVICES"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    mapfile -t GPUS < <(nvidia-smi --query-gpu=index --format=csv,noheader)
else
    GPUS=()
fi

if [ ${#GPUS[@]} -gt 0 ]; then DEFAULT_MODELS=qwen3-4b; else DEFAULT_MODELS=tiny-random; fi
MODELS=${BATCHSVC_WORKER_MODELS:-$DEFAULT_MODELS}
PREFIX=${BATCHSVC_LLM_QUEUE_PREFIX:-llm}
METRICS_PORT=${BATCHSVC_METRICS_PORT:-9102}

models_of_gpu() {  # the model list of GPU $1
    local pair
    for pair in ${BATCHSVC_GPU_MODELS:-}; do
        if [ "${pair%%:*}" = "$1" ]; then echo "${pair#*:}"; return; fi
    done
    echo "$MODELS"
}

metrics_port() {  # of GPU $1
    if [ "$METRICS_PORT" = 0 ]; then echo 0; else echo $((METRICS_PORT + $1)); fi
}

worker() {  # node name, model list; replaces the calling shell with the worker
    local queues
    queues=$(echo "$2" | tr ',' '\n' | sed "s/^/$PREFIX./" | paste -sd, -)
    BATCHSVC_PRELOAD_MODEL=${2%%,*} exec "$CELERY" -A tasks.worker worker -Q "$queues" --pool solo \
        --prefetch-multiplier 1 -n "$1@%h" --loglevel INFO
}

if [ ${#GPUS[@]} -eq 0 ]; then
    # exec: the worker itself is the process `make up` watches.
    export BATCHSVC_METRICS_PORT=$METRICS_PORT
    worker llm-cpu "$MODELS"
fi
if [ ${#GPUS[@]} -eq 1 ]; then
    # One GPU (a container or pod per GPU): exec too, so the worker is PID 1 and gets the
    # TERM of `docker stop` or Kubernetes itself, and no exit of this script cuts its
    # warm shutdown short.
    export CUDA_VISIBLE_DEVICES=${GPUS[0]}
    BATCHSVC_METRICS_PORT=$(metrics_port "${GPUS[0]}")
    export BATCHSVC_METRICS_PORT
    worker "llm-gpu${GPUS[0]}" "$(models_of_gpu "${GPUS[0]}")"
fi

trap 'kill 0' INT TERM EXIT
for gpu in "${GPUS[@]}"; do
    (CUDA_VISIBLE_DEVICES=$gpu BATCHSVC_METRICS_PORT=$(metrics_port "$gpu") worker "llm-gpu$gpu" "$(models_of_gpu "$gpu")") &
done
wait
