"""deploy/k8s/: every manifest validates against the Kubernetes schemas
(kubernetes-validate, offline), and the parts that must agree with the code do: the
probe paths with the Flask app, the GPU worker's grace period with the checkpoint
settings, the KEDA ScaledObject (a CRD the validator does not know) with the queue
keys Celery really uses."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from flask import Flask

from batchsvc.inference.models import load_models
from batchsvc.settings import PROJECT_ROOT, load_settings
from tasks.names import llm_queue, queue_keys
from tests.deploy.conftest import procfile, warm_shutdown_s
from web.auth import PUBLIC_ENDPOINTS

K8S = PROJECT_ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"  # the oldest release the manifests are meant for
CRDS = {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication")}


def manifests() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@functools.cache
def _resources() -> tuple[dict[str, Any], ...]:
    return tuple(doc for path in manifests() for doc in yaml.safe_load_all(path.read_text()) if doc)


def resources() -> list[dict[str, Any]]:
    """Every resource of every manifest, fresh copies (a test may change one)."""
    return copy.deepcopy(list(_resources()))


def one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_validates(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            continue  # checked field by field below
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_catches_a_wrong_field() -> None:
    web = one("Deployment", "batchsvc-web")
    web["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, KUBERNETES_VERSION, strict=True)


def test_each_kustomization_lists_its_manifests() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        here = kustomization.parent
        listed = {(here / r).resolve() for r in spec["resources"]}
        manifests_here = {p.resolve() for p in here.glob("*.yaml") if p.name != "kustomization.yaml"}
        # Secrets hold the operator's values: their *.example.yaml shapes are never applied.
        examples = {p.resolve() for p in here.glob("*.example.yaml")}
        assert manifests_here - examples <= listed and not examples & listed
        for resource in listed:
            assert resource.exists(), resource
        for generator in spec.get("configMapGenerator", []):
            for entry in generator["files"]:
                assert (here / entry.split("=")[-1]).exists(), entry
    gpu = yaml.safe_load((K8S / "gpu" / "kustomization.yaml").read_text())
    assert "../base" in gpu["resources"]


def test_every_container_of_ours_runs_a_procfile_entry() -> None:
    entries = procfile()
    images = {"batchsvc-cpu", "batchsvc-gpu"}
    ran = set()
    for resource in resources():
        if resource["kind"] != "Deployment":
            continue
        for container in containers(resource).values():
            if container["image"] in images:
                (entry,) = container["args"]
                assert entry in entries, f"{resource['metadata']['name']}: {entry}"
                ran.add(entry)
    assert ran == set(entries)


def test_web_probes_are_the_apps_public_health_routes(app: Flask) -> None:
    web = one("Deployment", "batchsvc-web")
    gunicorn, proxy = containers(web)["web"], containers(web)["proxy"]
    routes = {rule.rule: rule.endpoint for rule in app.url_map.iter_rules()}
    liveness, readiness = gunicorn["livenessProbe"]["httpGet"], gunicorn["readinessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz" and readiness["path"] == "/readyz"
    for probe in (liveness, readiness, proxy["readinessProbe"]["httpGet"]):
        assert routes[probe["path"]] in PUBLIC_ENDPOINTS  # the kubelet has no API key
    # gunicorn's probe port is the one the Procfile binds; clients only reach nginx.
    (port,) = gunicorn["ports"]
    assert liveness["port"] == readiness["port"] == port["name"] and port["containerPort"] == 8000
    assert "${PORT:-8000}" in procfile()["web"]
    assert {"name": "BIND_HOST", "value": "0.0.0.0"} in gunicorn["env"]
    service = one("Service", "batchsvc-web")
    (http,) = proxy["ports"]
    assert service["spec"]["ports"][0]["targetPort"] == http["name"] and http["containerPort"] == 8080
    assert {"name": "BATCHSVC_UPSTREAM", "value": "127.0.0.1:8000"} in proxy["env"]


def test_web_scales_on_cpu_and_keeps_one_pod_through_disruptions() -> None:
    labels = one("Deployment", "batchsvc-web")["spec"]["template"]["metadata"]["labels"]
    hpa = one("HorizontalPodAutoscaler", "batchsvc-web")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "batchsvc-web"}
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu" and hpa["minReplicas"] >= 2
    pdb = one("PodDisruptionBudget", "batchsvc-web")["spec"]
    assert pdb["minAvailable"] == 1 and pdb["selector"]["matchLabels"].items() <= labels.items()
    assert one("Service", "batchsvc-web")["spec"]["selector"].items() <= labels.items()


def test_beat_has_exactly_one_replica_ever() -> None:
    beat = one("Deployment", "batchsvc-beat")["spec"]
    assert beat["replicas"] == 1 and beat["strategy"] == {"type": "Recreate"}


def test_settings_come_from_the_configmap_and_secret_and_load() -> None:
    config = one("ConfigMap", "batchsvc-settings")["data"]
    secret = one("Secret", "batchsvc-secrets")["stringData"]
    settings = load_settings(environ={**config, **secret})
    assert settings.storage_backend == "s3" and settings.forwarded_hops == 1
    for key in config:
        assert key.startswith("BATCHSVC_") and (
            hasattr(settings, key.removeprefix("BATCHSVC_").lower()) or key == "BATCHSVC_WORKER_MODELS"
        ), key
    for resource in resources():
        if resource["kind"] == "Deployment":
            for container in containers(resource).values():
                if container["image"].startswith("batchsvc-"):
                    refs = [next(iter(ref.values()))["name"] for ref in container["envFrom"]]
                    assert refs == ["batchsvc-settings", "batchsvc-secrets"], resource["metadata"]["name"]


def gpu_workers() -> list[dict[str, Any]]:
    return [
        r
        for r in resources()
        if r["kind"] == "Deployment" and any(c["image"] == "batchsvc-gpu" for c in containers(r).values())
    ]


def test_gpu_workers_take_one_gpu_and_time_to_checkpoint() -> None:
    workers = gpu_workers()
    assert workers
    for deployment in workers:
        pod = deployment["spec"]["template"]["spec"]
        (worker,) = pod["containers"]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert {"name": "CUDA_VISIBLE_DEVICES", "value": "0"} in worker["env"]
        # KILL comes this long after TERM: the warm shutdown must checkpoint before it.
        assert pod["terminationGracePeriodSeconds"] >= warm_shutdown_s()
        shm = next(m for m in worker["volumeMounts"] if m["mountPath"] == "/dev/shm")
        assert next(v for v in pod["volumes"] if v["name"] == shm["name"])["emptyDir"]["medium"] == "Memory"


def _gib(quantity: str) -> float:
    units = {"Mi": 1 / 1024, "Gi": 1.0, "Ti": 1024.0}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_the_worker_memory_budget_fits_the_gpu_pod() -> None:
    """The worker ends itself (worker_max_rss_mb) before the pod's memory runs out:
    its budget and its /dev/shm (RAM too) fit in what the pod asks for."""
    settings = load_settings(environ=one("ConfigMap", "batchsvc-settings")["data"])
    assert settings.worker_max_rss_mb > 0
    for deployment in gpu_workers():
        pod = deployment["spec"]["template"]["spec"]
        (worker,) = pod["containers"]
        shm = next(v for v in pod["volumes"] if v["name"] == "shm")["emptyDir"]["sizeLimit"]
        assert settings.worker_max_rss_mb / 1024 + _gib(shm) <= _gib(worker["resources"]["requests"]["memory"])


def test_the_scaled_object_watches_every_list_of_the_models_queue() -> None:
    settings = load_settings(environ={})
    secret = one("Secret", "batchsvc-secrets")["stringData"]
    broker_db = urlsplit(secret["BATCHSVC_BROKER_URL"]).path.lstrip("/")
    aliases = set(load_models(settings.path(settings.models_file)))
    scaled = [r for r in resources() if r["kind"] == "ScaledObject"]
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == {w["metadata"]["name"] for w in gpu_workers()}
    for so in scaled:
        spec = so["spec"]
        target = one("Deployment", spec["scaleTargetRef"]["name"])
        env = {e["name"]: e["value"] for e in containers(target)["worker"]["env"]}
        (model,) = env["BATCHSVC_WORKER_MODELS"].split(",")
        assert model in aliases
        triggers = spec["triggers"]
        assert {t["type"] for t in triggers} == {"redis"}
        # One trigger per Redis list of the queue (one per priority step), as Celery names them.
        assert [t["metadata"]["listName"] for t in triggers] == queue_keys(llm_queue(settings, model))
        assert {t["metadata"]["databaseIndex"] for t in triggers} == {broker_db}
        # ... and their sum decides, not the longest one alone.
        modifiers = spec["advanced"]["scalingModifiers"]
        assert sorted(re.split(r"\s*\+\s*", modifiers["formula"])) == sorted(t["name"] for t in triggers)
        assert modifiers["metricType"] in ("AverageValue", "Value") and float(modifiers["target"]) > 0
        assert 0 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
        for trigger in triggers:
            auth = one("TriggerAuthentication", trigger["authenticationRef"]["name"])
            for ref in auth["spec"]["secretTargetRef"]:
                assert ref["parameter"] in ("address", "host", "port", "username", "password")
                assert ref["key"] in one("Secret", ref["name"])["stringData"]
