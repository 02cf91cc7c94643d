"""`batchsvc`: the command-line client of the batchsvc HTTP API.

Reads the server from --url or BATCHSVC_URL (default http://127.0.0.1:8000) and
the key from --api-key or BATCHSVC_API_KEY. Exit codes: 0 completed; 1 failed;
2 usage or API error; 3 cancelled or expired.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson
import requests

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_STOPPED = 0, 1, 2, 3
_TERMINAL = {"completed": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_STOPPED, "expired": EXIT_STOPPED}


class Client:
    def __init__(self, url: str, api_key: str | None, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise click.ClickException(f"cannot reach {self.url}: {type(exc).__name__}") from None
        try:
            body = response.json()
        except ValueError:
            raise click.ClickException(f"{method} {path}: HTTP {response.status_code}, not JSON") from None
        if response.status_code >= 400:
            error = body.get("error", {})
            raise click.ClickException(f"{error.get('type', response.status_code)}: {error.get('message', body)}")
        return body

    def download(self, url: str, path: Path) -> int:
        size = 0
        with self.session.get(url, stream=True, timeout=self.timeout) as response:
            response.raise_for_status()
            with path.open("wb") as out:
                for chunk in response.iter_content(1024 * 1024):
                    out.write(chunk)
                    size += len(chunk)
        return size


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60:02d}:{seconds % 60:02d}")
    )


def progress_line(job: dict[str, Any], width: int = 30) -> str:
    p, t = job["progress"], job["throughput"]
    done = p["completed"] + p["failed"]
    total = p["total"] or 0
    filled = int(width * min(1.0, done / total)) if total else 0
    rate = f"{t['req_per_sec']:.1f} req/s" if t["req_per_sec"] else "-- req/s"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total or '?'} "
        f"({p['percent']:.0f}%)  {rate}  ETA {_eta(t['estimated_remaining'])}  {job['status']}"
    )


def wait_for(client: Client, job_id: str, interval: float = 1.0) -> dict[str, Any]:
    tty = sys.stderr.isatty()
    last = ""
    while True:
        job = client.call("GET", f"/v1/batch/{job_id}")
        line = progress_line(job)
        if tty:
            click.echo("\r" + line.ljust(len(last)), nl=False, err=True)
        elif line != last:
            click.echo(line, err=True)
        last = line
        if job["status"] in _TERMINAL:
            if tty:
                click.echo(err=True)
            return job
        time.sleep(interval)


@click.group()
@click.option("--url", envvar="BATCHSVC_URL", default="http://127.0.0.1:8000", show_default=True)
@click.option("--api-key", envvar="BATCHSVC_API_KEY", default=None)
@click.pass_context
def main(ctx: click.Context, url: str, api_key: str | None) -> None:
    """Submit and follow batch jobs on a batchsvc server."""
    ctx.obj = Client(url, api_key)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", required=True)
@click.option("--webhook-url", default=None)
@click.option("--name", "job_name", default=None, help="metadata.job_name")
@click.option("--priority", type=click.IntRange(0, 9), default=None, help="0-9, higher runs sooner")
@click.option("--wait/--no-wait", default=False, help="follow the job with a progress bar until it ends")
@click.pass_obj
def submit(
    client: Client,
    file: Path,
    model: str,
    webhook_url: str | None,
    job_name: str | None,
    priority: int | None,
    wait: bool,
) -> None:
    """Upload FILE (OpenAI batch JSONL) as a new job."""
    metadata = {k: v for k, v in {"job_name": job_name, "priority": priority}.items() if v is not None}
    form = {"model": model, "metadata": orjson.dumps(metadata).decode()}
    if webhook_url:
        form["webhook_url"] = webhook_url
    with file.open("rb") as fh:
        job = client.call("POST", "/v1/batch", data=form, files={"file": (file.name, fh, "application/jsonl")})
    click.echo(job["job_id"])
    if wait:
        _finish(client, wait_for(client, job["job_id"]))


def _finish(client: Client, job: dict[str, Any]) -> None:
    if job["status"] == "completed":
        results = client.call("GET", f"/v1/batch/{job['job_id']}/results")
        stats = results["stats"]
        click.echo(f"completed: {stats['successful']} succeeded, {stats['failed']} failed", err=True)
    else:
        for error in job.get("errors", [])[:10]:
            click.echo(f"line {error.get('line')}: {error.get('message')}", err=True)
        click.echo(f"job {job['status']}", err=True)
    sys.exit(_TERMINAL[job["status"]])


@main.command()
@click.argument("job_id")
@click.option("--wait/--no-wait", default=False)
@click.pass_obj
def status(client: Client, job_id: str, wait: bool) -> None:
    """Show a job (JSON), or follow it with --wait."""
    if wait:
        _finish(client, wait_for(client, job_id))
    click.echo(orjson.dumps(client.call("GET", f"/v1/batch/{job_id}"), option=orjson.OPT_INDENT_2).decode())


@main.command()
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--errors", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.pass_obj
def results(client: Client, job_id: str, output: Path, errors: Path | None) -> None:
    """Download a completed job's results (and errors) files."""
    info = client.call("GET", f"/v1/batch/{job_id}/results")
    size = client.download(info["results_url"], output)
    click.echo(f"{output}: {size} bytes", err=True)
    if errors is not None and info.get("errors_url"):
        size = client.download(info["errors_url"], errors)
        click.echo(f"{errors}: {size} bytes", err=True)


if __name__ == "__main__":
    main()
