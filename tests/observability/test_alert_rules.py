"""The shipped Prometheus configuration and alerts, checked by Prometheus's own promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from batchsvc.settings import PROJECT_ROOT

CONFIGS = PROJECT_ROOT / "configs" / "prometheus"
HERE = Path(__file__).parent


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: scripts/setup.sh installs Debian's prometheus package")
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_scrape_config_is_valid_with_the_files_it_names(tmp_path: Path) -> None:
    # In a copy of the layout it expects, so that the credentials file it reads
    # (var/bootstrap-api-key, made by `make up`) exists without touching var/.
    (tmp_path / "configs").mkdir()
    shutil.copytree(CONFIGS, tmp_path / "configs" / "prometheus")
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "bootstrap-api-key").write_text("bsk_example\n")
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path / "configs" / "prometheus")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_the_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", "alerts.yml", cwd=CONFIGS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_and_stays_silent_where_its_unit_tests_say() -> None:
    result = promtool("test", "rules", "alerts_test.yml", cwd=HERE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
