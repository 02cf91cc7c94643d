"""The Grafana dashboard: its data source is a variable, it has the panels the
issue asks for, and every query parses on the real Prometheus and names metrics
that Prometheus saw while scraping a stack through a real job."""

from __future__ import annotations

import contextlib
import re

import orjson
import requests

from batchsvc.metrics import GPU_FAMILIES
from batchsvc.settings import PROJECT_ROOT
from tests.observability.conftest import FinishedJob, Watched
from tests.support.stack import wait_until

DASHBOARD = PROJECT_ROOT / "configs" / "grafana" / "dashboards" / "batchsvc.json"
# Grafana's variables, as Grafana would substitute them before asking Prometheus.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$model": ".*"}
METRIC = re.compile(r"\b(?:batchsvc_|vllm:)[a-zA-Z0-9_:]+")
# Only a host with a GPU has these (this one has none): they are checked against what
# the GPU collector defines instead of what Prometheus saw.
GPU_ONLY = {name for name, _ in GPU_FAMILIES.values()}


def dashboard() -> dict:
    return orjson.loads(DASHBOARD.read_bytes())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def test_the_data_source_is_a_template_variable() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]


def test_it_has_every_section_the_issue_asks_for() -> None:
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    assert rows == ["GPU", "Throughput", "Queue", "Job progress", "Quality", "System"]
    titles = {p["title"] for p in panels()}
    assert {"Answer distribution", "Schema-valid answers", "Errors by code"} <= titles


def test_every_query_parses_and_names_metrics_prometheus_saw(watched: Watched, finished_job: FinishedJob) -> None:
    named: set[str] = set()
    for expr in expressions():
        query = expr
        for variable, value in VARIABLES.items():
            query = query.replace(variable, value)
        response = requests.get(f"{watched.prometheus}/api/v1/query", params={"query": query}, timeout=10)
        assert response.json()["status"] == "success", (expr, response.json())
        named |= set(METRIC.findall(expr))
    assert named & GPU_ONLY == GPU_ONLY  # every GPU reading has a panel

    def names_seen() -> set[str]:
        response = requests.get(f"{watched.prometheus}/api/v1/label/__name__/values", timeout=10)
        return set(response.json()["data"])

    # Three targets scraped each second: the LLM worker's series can land a few
    # scrapes after the cpu worker's (CI stop 18 asserted between the two).
    needed = named - GPU_ONLY
    with contextlib.suppress(TimeoutError):  # the assertion below names what is missing
        wait_until(lambda: needed <= names_seen(), 60, interval=1, what="Prometheus to see every named metric")
    assert needed <= names_seen(), sorted(needed - names_seen())
