"""docker-compose.yml: valid against the Compose specification's schema, the services
the deployment needs, and each batchsvc container running a Procfile entry that
exists in the image. No Docker engine runs here, so this is how the file is checked."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from batchsvc.settings import PROJECT_ROOT, load_settings
from tests.deploy.conftest import dockerfile_stages, duration_s, procfile, program_of, warm_shutdown_s

OUR_IMAGES = {"batchsvc:cpu": "cpu", "batchsvc:gpu": "gpu"}
# What the observability work (issue 12) provides; compose mounts it as it is.
OBSERVABILITY = ("configs/prometheus", "configs/grafana")


def compose_validator() -> jsonschema.Draft201909Validator:
    """The schema inside Docker's docker-compose 1.x wheel, which scripts/setup.sh downloads.
    It names draft 2019-09 in a spelling jsonschema does not look up, so that draft is given."""
    wheels = sorted((PROJECT_ROOT / "var" / "cache").glob("docker_compose-*.whl"))
    assert wheels, "var/cache/docker_compose-*.whl is missing: run scripts/setup.sh"
    with zipfile.ZipFile(wheels[-1]) as wheel:
        schema = json.loads(wheel.read("compose/config/compose_spec.json"))
    assert schema["title"] == "Compose Specification" and "2019-09" in schema["$schema"]
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("image") in OUR_IMAGES}


def test_the_file_validates_against_the_compose_specification(compose: dict[str, Any]) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_validator().iter_errors(compose)]
    assert errors == []


def test_the_schema_check_catches_a_wrong_field(compose: dict[str, Any]) -> None:
    """The validator is live: a misspelt key fails it."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["web"]["comand"] = ["web"]
    assert list(compose_validator().iter_errors(broken))


def test_the_stack_has_every_service_of_the_deployment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    commands = {name: svc.get("command") for name, svc in ours(compose).items()}
    for entry in ("web", "cpu", "beat", "flower"):
        assert [entry] in commands.values(), entry
    assert {"redis", "minio", "minio-setup", "proxy", "prometheus", "grafana"} <= set(services)
    # Exactly one beat: two would run every periodic task twice.
    beats = [name for name, command in commands.items() if command == ["beat"]]
    assert len(beats) == 1 and "replicas" not in services[beats[0]].get("deploy", {})


def test_redis_runs_the_production_config_with_aof(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    mount = next(v for v in redis["volumes"] if v.startswith("./configs/redis-production.conf:"))
    target = mount.split(":")[1]
    assert target in " ".join(redis["command"])
    conf = (PROJECT_ROOT / "configs/redis-production.conf").read_text()
    assert "appendonly yes" in conf and "maxmemory-policy noeviction" in conf
    assert any(v.endswith(":/data") for v in redis["volumes"])  # the AOF outlives the container


def test_minio_setup_makes_the_bucket_and_imports_the_lifecycle(compose: dict[str, Any]) -> None:
    setup = compose["services"]["minio-setup"]
    script = " ".join(setup["command"])
    assert "mc mb --ignore-existing" in script
    assert "mc ilm rule import" in script and "< /config/minio-lifecycle.json" in script
    assert "./configs/minio-lifecycle.json:/config/minio-lifecycle.json:ro" in setup["volumes"]
    assert setup["depends_on"]["minio"]["condition"] == "service_healthy"
    for name, svc in ours(compose).items():
        if "minio-setup" in svc.get("depends_on", {}):
            assert svc["depends_on"]["minio-setup"]["condition"] == "service_completed_successfully", name


def test_every_batchsvc_container_runs_a_procfile_entry(compose: dict[str, Any]) -> None:
    """The image's entrypoint runs a Procfile entry by name, so `command` must be one."""
    entries = procfile()
    stages = dockerfile_stages()
    assert 'ENTRYPOINT ["/app/scripts/procfile_exec.sh"]' in stages["runtime"]
    for name, svc in ours(compose).items():
        if "entrypoint" in svc:  # a one-shot with its own program (tiny-model)
            program = svc["entrypoint"][1] if svc["entrypoint"][0].endswith("python") else svc["entrypoint"][0]
            assert (PROJECT_ROOT / program).exists(), name
            continue
        command = svc["command"]
        assert len(command) == 1 and command[0] in entries, f"{name}: {command} is not a Procfile entry"
        assert OUR_IMAGES[svc["image"]] == svc["build"]["target"] and svc["build"]["target"] in stages


def test_the_procfile_programs_exist_in_the_image() -> None:
    """The image is this source tree plus the venv scripts/install.sh makes, the same install
    as this test run's: each Procfile program must be in one of the two, not left out of
    the build context, and the modules it loads must import."""
    ignored = [line.strip().rstrip("/") for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()]
    for name, command in procfile().items():
        program = program_of(command)
        if program.startswith(".venv/"):
            # .venv is ignored by the build context: the image's own venv, made by the install, holds it.
            assert os.access(PROJECT_ROOT / program, os.X_OK), f"{name}: {program} is not installed"
        else:
            assert os.access(PROJECT_ROOT / program, os.X_OK), f"{name}: {program} is not executable"
            assert program.split("/")[0] not in ignored, f"{name}: {program} is left out of the image"
        words = shlex.split(command)
        if "-A" in words:
            assert importlib.util.find_spec(words[words.index("-A") + 1]), name
    web_app = next(w for w in shlex.split(procfile()["web"]) if ":create_app" in w)
    module, factory = web_app.split(":")
    assert callable(getattr(importlib.import_module(module), factory.removesuffix("()")))


def test_procfile_exec_runs_the_named_entry(tmp_path: Path) -> None:
    """The entrypoint itself, on a Procfile of its own: the named line runs, shell
    expansion included, as the process itself; an unknown name is refused."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts/procfile_exec.sh").write_bytes((PROJECT_ROOT / "scripts/procfile_exec.sh").read_bytes())
    (tmp_path / "Procfile").write_text("web: echo web on ${PORT:-8000}\nweb-two: echo two $$\n")
    run = [str(tmp_path / "scripts/procfile_exec.sh")]
    os.chmod(run[0], 0o755)
    assert subprocess.run([*run, "web"], capture_output=True, text=True, env={"PATH": os.environ["PATH"]}).stdout == (
        "web on 8000\n"
    )
    ran = subprocess.run([*run, "web"], capture_output=True, text=True, env={"PATH": os.environ["PATH"], "PORT": "9"})
    assert ran.stdout == "web on 9\n"
    missing = subprocess.run([*run, "worker"], capture_output=True, text=True)
    assert missing.returncode == 2 and "no entry named worker" in missing.stderr


def test_gpu_workers_one_per_gpu_under_the_gpu_profile(compose: dict[str, Any]) -> None:
    gpu = {name: svc for name, svc in ours(compose).items() if svc["image"] == "batchsvc:gpu"}
    assert len(gpu) >= 2
    seen: set[str] = set()
    for name, svc in gpu.items():
        assert svc["profiles"] == ["gpu"] and svc["command"] == ["worker"], name
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        (gpu_id,) = device["device_ids"]
        assert gpu_id not in seen, f"{name} reserves GPU {gpu_id} twice"
        seen.add(gpu_id)
        # The container sees its one GPU as device 0; scripts/llm_workers.sh then execs one worker.
        assert svc["environment"]["CUDA_VISIBLE_DEVICES"] == "0", name
        assert duration_s(svc["stop_grace_period"]) >= warm_shutdown_s(), name
    # Nothing else asks for a GPU, and without the profile no GPU service starts.
    for name, svc in compose["services"].items():
        if name not in gpu:
            assert "devices" not in str(svc.get("deploy", {})), name
            assert "gpu" not in svc.get("profiles", []), name


def test_settings_come_from_the_env_file_and_load(compose: dict[str, Any]) -> None:
    """Every batchsvc container reads deploy/compose.env; the example of it loads as
    settings (each BATCHSVC_ name is a setting, or a variable a script reads)."""
    for name, svc in ours(compose).items():
        assert svc["env_file"] == "deploy/compose.env", name
    example = PROJECT_ROOT / "deploy/compose.env.example"
    environ = dict(line.split("=", 1) for line in example.read_text().splitlines() if line and not line.startswith("#"))
    settings = load_settings(environ=environ)
    assert settings.storage_backend == "s3" and settings.forwarded_hops == 1
    assert settings.broker_url.startswith(f"redis://:{environ['REDIS_PASSWORD']}@redis:6379/")
    scripts = " ".join(p.read_text() for p in (PROJECT_ROOT / "scripts").glob("*.sh"))
    for key in environ:
        if key.startswith("BATCHSVC_"):
            field = key.removeprefix("BATCHSVC_").lower()
            assert hasattr(settings, field) or key in scripts, f"{key} is neither a setting nor read by a script"


def test_no_secret_goes_into_an_image() -> None:
    """Secrets come at run time: the Dockerfile sets none, and the env file is not in the build context."""
    for stage, lines in dockerfile_stages().items():
        for line in lines:
            if line.split()[0] in ("ENV", "ARG"):
                for word in ("SECRET", "PASSWORD", "TOKEN", "API_KEY", "ACCESS_KEY"):
                    assert word not in line.upper(), f"{stage}: {line}"
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    assert "deploy/compose.env" in ignored
    assert "deploy/compose.env" in (PROJECT_ROOT / ".gitignore").read_text().splitlines()


def test_only_the_proxy_publishes_the_api(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "ports" not in services["web"] and services["web"]["environment"]["BIND_HOST"] == "0.0.0.0"
    proxy = services["proxy"]
    assert proxy["ports"] == ["8000:8080"] and proxy["environment"]["BATCHSVC_UPSTREAM"] == "web:8000"
    assert "./deploy/k8s/base/nginx.conf.template:/etc/nginx/templates/default.conf.template:ro" in proxy["volumes"]


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    """Each bind mount is a file of the tree, or one the operator makes (and git ignores)."""
    ignored = (PROJECT_ROOT / ".gitignore").read_text().splitlines()
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0].removeprefix("./")
            if volume.startswith("./") and not source.startswith(OBSERVABILITY):
                assert (PROJECT_ROOT / source).exists() or source in ignored, f"{name}: {source}"


def observability(path: str) -> Path:
    if not (PROJECT_ROOT / path).exists():
        pytest.skip(f"{path} is not in the repository yet (issue 12 provides it)")
    return PROJECT_ROOT / path


def test_prometheus_scrapes_the_stack_with_the_observability_jobs_and_rules(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/compose-prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes
    assert "./configs/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes
    ours = yaml.safe_load((PROJECT_ROOT / "deploy/compose-prometheus.yml").read_text())
    assert ours["rule_files"] == ["/etc/prometheus/alerts.yml"]
    theirs = yaml.safe_load(observability("configs/prometheus/prometheus.yml").read_text())
    observability("configs/prometheus/alerts.yml")

    def jobs(config: dict[str, Any]) -> dict[str, Any]:
        """Each scrape job without its targets: what must be the same in both."""
        return {
            job["job_name"]: (
                job.get("metrics_path"),
                sorted(str(g.get("labels")) for g in job["static_configs"]),
                "authorization" in job,
            )
            for job in config["scrape_configs"]
        }

    assert jobs(ours) == jobs(theirs)
    # promtool reads it as the container would, with the mounted paths mapped to here.
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/setup.sh installs prometheus"
    text = (PROJECT_ROOT / "deploy/compose-prometheus.yml").read_text()
    text = text.replace("/etc/prometheus/alerts.yml", str(PROJECT_ROOT / "configs/prometheus/alerts.yml"))
    (tmp_path / "api-key").write_text("bsk_test\n")
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/api-key", str(tmp_path / "api-key")))
    check = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # Each target is a service of the stack, on the port its process serves metrics on.
    services = compose["services"]
    entries = procfile()
    launchers = {
        "api": entries["web"],
        "cpu": entries["cpu"],
        "llm": (PROJECT_ROOT / "scripts/llm_workers.sh").read_text(),
    }
    for job in ours["scrape_configs"]:
        for group in job["static_configs"]:
            role = (group.get("labels") or {}).get("role", "api")
            for target in group["targets"]:
                host, port = target.split(":")
                assert host in services, target
                assert f":-{port}}}" in launchers[role], f"{target}: no {role} process serves port {port}"


def test_grafana_gets_the_provisioned_datasource_and_dashboards(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    assert "./configs/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    mount = next(v for v in grafana["volumes"] if v.startswith("./configs/grafana/dashboards:"))
    provisioning = observability("configs/grafana/provisioning")
    (providers,) = [yaml.safe_load(p.read_text()) for p in (provisioning / "dashboards").glob("*.y*ml")]
    assert {p["options"]["path"] for p in providers["providers"]} == {mount.split(":")[1]}
    assert list(observability("configs/grafana/dashboards").glob("*.json"))
    (datasources,) = [p.read_text() for p in (provisioning / "datasources").glob("*.y*ml")]
    assert "${BATCHSVC_PROMETHEUS_URL" in datasources
    assert grafana["environment"]["BATCHSVC_PROMETHEUS_URL"] == "http://prometheus:9090"
