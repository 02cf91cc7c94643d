"""`batchsvc models add`: an entry sized from a local model's config.json, or
conservative for a hub name (and saying so); an alias in use is refused; the
file it writes still loads and keeps its comments."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from batchsvc.client.cli import main
from batchsvc.inference.models import CONSERVATIVE_ENGINE_ARGS, load_models
from batchsvc.settings import PROJECT_ROOT

TINY = PROJECT_ROOT / "var" / "models" / "tiny-random"


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.yaml"
    shutil.copy(PROJECT_ROOT / "configs" / "models.yaml", path)
    return path


def add(models_file: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["models", "add", *args, "--file", str(models_file)])


def test_a_local_model_gets_settings_sized_from_its_config_json(models_file: Path) -> None:
    result = add(models_file, str(TINY), "--alias", "tiny-copy")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "tiny-copy"
    assert f"sized from {TINY}/config.json" in result.stderr
    spec = load_models(models_file)["tiny-copy"]
    assert spec.model == str(TINY)
    assert spec.engine_args["max_model_len"] == 2048  # the model's max_position_embeddings
    assert spec.engine_args["dtype"] == "bfloat16"  # its config's dtype
    assert spec.engine_args["max_num_seqs"] == 256 and spec.engine_args["tensor_parallel_size"] == 1
    assert "# Qwen3 thinks by default" in models_file.read_text()  # the file's comments stay
    assert set(load_models(models_file)) >= {"qwen3-4b", "tiny-random", "tiny-copy"}


def test_a_hub_name_gets_conservative_settings_and_says_so(models_file: Path) -> None:
    result = add(models_file, "mistralai/Mistral-7B-Instruct-v0.3")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "mistral-7b-instruct-v0.3"
    assert "conservative engine settings" in result.stderr
    spec = load_models(models_file)["mistral-7b-instruct-v0.3"]
    assert spec.model == "mistralai/Mistral-7B-Instruct-v0.3"
    for name, value in CONSERVATIVE_ENGINE_ARGS.items():
        assert spec.engine_args[name] == value


def test_an_alias_that_exists_is_refused_and_the_file_is_unchanged(models_file: Path) -> None:
    before = models_file.read_text()
    result = add(models_file, "Qwen/Qwen3-4B")  # the alias qwen3-4b exists
    assert result.exit_code == 2
    assert "'qwen3-4b' already exists" in result.stderr
    assert models_file.read_text() == before
