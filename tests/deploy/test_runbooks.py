"""Every command the runbooks (and docs/deployment.md) show is real: a `batchsvc`
subcommand whose options its `--help` lists, a `curl` on a route of the app's URL map,
a `celery inspect` action Celery lists, a make target, a script in the tree, a
Kubernetes Deployment of deploy/k8s/, or one of a few outside tools. Every metric
they name is one the service exports."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from click.testing import CliRunner
from flask import Flask
from werkzeug.exceptions import MethodNotAllowed, NotFound

from batchsvc.client.cli import main as batchsvc_cli
from batchsvc.settings import PROJECT_ROOT

DOCS = [*sorted((PROJECT_ROOT / "docs" / "runbooks").glob("*.md")), PROJECT_ROOT / "docs" / "deployment.md"]
RUNBOOKS = {"stuck-job", "worker-crash-loop", "redis-restart", "storage-outage", "rotate-secrets", "add-gpus",
            "restore-from-backup", "switch-model"}  # fmt: skip
# Programs that are not this project's: their own documentation vouches for them.
OUTSIDE = {"docker", "kubectl", "mc", "redis-cli", "nvidia-smi", "git", "cp", "python3", "twine", "honcho"}


def commands(doc: Path) -> list[str]:
    """The command lines of a document's ```bash blocks (continuations joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", doc.read_text(), re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def all_commands() -> list[tuple[str, str]]:
    return [(doc.name, line) for doc in DOCS for line in commands(doc)]


@functools.cache
def help_text(*path: str) -> str:
    result = CliRunner().invoke(batchsvc_cli, [*path, "--help"])
    assert result.exit_code == 0, f"batchsvc {' '.join(path)} --help: {result.output}"
    return result.output


def subcommands(help_output: str) -> set[str]:
    listed = help_output.split("Commands:\n", 1)[1] if "Commands:\n" in help_output else ""
    return {line.split()[0] for line in listed.splitlines() if line.startswith("  ") and line.split()}


def check_batchsvc(words: list[str]) -> None:
    path: list[str] = []
    args = words[1:]
    while args and subcommands(help_text(*path)):
        word = args.pop(0)
        if word.startswith("--"):  # a group's option, such as --url, with its value
            assert f"{word} " in help_text(*path), f"batchsvc {' '.join(path)} has no option {word}"
            args.pop(0)
            continue
        assert word in subcommands(help_text(*path)), f"batchsvc {' '.join(path)} has no subcommand {word}"
        path.append(word)
    assert path, "a bare `batchsvc`"
    for word in args:
        if word.startswith("-"):
            option = word.split("=")[0]
            assert re.search(rf"(^|[\s,]){re.escape(option)}[\s,]", help_text(*path), re.M), (
                f"batchsvc {' '.join(path)} has no option {option}"
            )


@functools.cache
def inspect_actions() -> set[str]:
    listed = subprocess.run(
        [str(PROJECT_ROOT / ".venv/bin/celery"), "inspect", "--list"], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[0] for line in listed.splitlines() if line.startswith("  ") and line.split()}


def check_celery(words: list[str]) -> None:
    assert words[1:3] == ["-A", "tasks.worker"], "celery commands name the app: celery -A tasks.worker ..."
    if words[3] == "inspect":
        assert words[4] in inspect_actions(), f"celery inspect has no {words[4]}"
    else:
        assert words[3] in ("worker", "beat", "flower", "purge", "call", "result", "status"), words[3]


def check_curl(words: list[str], app: Flask) -> None:
    method = "GET"
    urls = [w for w in words if w.startswith(("$BATCHSVC_URL", "http://", "https://"))]
    assert len(urls) == 1, f"one URL per curl: {words}"
    for i, word in enumerate(words):
        if word in ("-X", "--request"):
            method = words[i + 1]
        elif word in ("-d", "--data", "-F", "--form") and method == "GET":
            method = "POST"
    url = urls[0].replace("$BATCHSVC_URL", "http://batch")
    path = urlsplit(url).path
    try:
        app.url_map.bind("batch").match(path, method=method)
    except MethodNotAllowed:
        raise AssertionError(f"{method} {path} is not allowed") from None
    except NotFound:
        raise AssertionError(f"{path} is no route of the API") from None


@functools.cache
def deployments() -> set[str]:
    names = set()
    for manifest in (PROJECT_ROOT / "deploy" / "k8s").rglob("*.yaml"):
        for doc in yaml.safe_load_all(manifest.read_text()):
            if doc and doc.get("kind") == "Deployment":
                names.add(doc["metadata"]["name"])
    return names


def check(line: str, app: Flask) -> None:
    words = shlex.split(line, comments=True)
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value before a command
        words.pop(0)
    if not words or words[0] == "export":
        return
    program = words[0]
    if program == "batchsvc":
        check_batchsvc(words)
    elif program == "celery":
        check_celery(words)
    elif program == "curl":
        check_curl(words, app)
    elif program == "make":
        targets = re.findall(r"^([\w-]+):", (PROJECT_ROOT / "Makefile").read_text(), re.M)
        assert set(words[1:]) <= set(targets), f"no make target {words[1:]}"
    elif program.startswith(("scripts/", ".venv/bin/", "./")):
        assert (PROJECT_ROOT / program).exists(), f"{program} does not exist"
    else:
        assert program in OUTSIDE, f"unknown program {program!r}: add it to OUTSIDE if it is not ours"
    if program == "kubectl":
        for name in re.findall(r"(?:^|\s)deploy/([\w-]+)(?=\s|$)", line):
            assert name in deployments(), f"no Deployment {name} in deploy/k8s/"


def test_there_is_a_runbook_for_each_case_with_its_four_parts() -> None:
    books = {p.stem for p in DOCS if p.parent.name == "runbooks"} - {"README"}
    assert books == RUNBOOKS
    for name in RUNBOOKS:
        text = (PROJECT_ROOT / "docs" / "runbooks" / f"{name}.md").read_text()
        for heading in ("## Symptoms", "## What shows it", "## Commands", "## Confirm the fix"):
            assert heading in text, f"{name}.md has no {heading!r}"
        assert commands(PROJECT_ROOT / "docs" / "runbooks" / f"{name}.md"), f"{name}.md shows no command"


@pytest.mark.parametrize(("doc", "line"), all_commands(), ids=[f"{d}: {c[:60]}" for d, c in all_commands()])
def test_every_command_shown_is_real(app: Flask, doc: str, line: str) -> None:
    check(line, app)


@pytest.mark.parametrize(
    "line",
    [
        "batchsvc jobs list",  # no such subcommand
        "batchsvc keys create --tenant acme --owner me",  # no such option
        "curl -X DELETE $BATCHSVC_URL/v1/batch/batch_1",  # no such method on the route
        "curl $BATCHSVC_URL/v1/jobs",  # no such route
        "celery -A tasks.worker inspect everything",
        "kubectl rollout restart deploy/batchsvc-api",
        "make deploy",
        "systemctl restart batchsvc",
    ],
)
def test_the_check_refuses_what_is_not_real(app: Flask, line: str) -> None:
    with pytest.raises(AssertionError):
        check(line, app)


def test_every_metric_named_is_exported() -> None:
    sources = " ".join(p.read_text() for d in ("web", "tasks", "batchsvc") for p in (PROJECT_ROOT / d).rglob("*.py"))
    rules = PROJECT_ROOT / "configs" / "prometheus"
    if rules.exists():
        sources += " ".join(p.read_text() for p in rules.rglob("*.y*ml"))
    for doc in DOCS:
        for metric in set(re.findall(r"\bbatchsvc_[a-z_]+\b", doc.read_text())):
            assert f'"{metric}"' in sources or metric in sources, f"{doc.name} names {metric}, which nothing exports"


def test_every_alert_named_is_a_rule() -> None:
    rules = yaml.safe_load((PROJECT_ROOT / "configs" / "prometheus" / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    named = set()
    for doc in DOCS:
        named |= set(re.findall(r"[Aa]lert `(\w+)`", doc.read_text())) | set(re.findall(r"; `(\w+)`:", doc.read_text()))
    assert named and named <= alerts, named - alerts
