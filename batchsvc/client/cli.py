"""`batchsvc`: the command-line client of the batchsvc HTTP API (/v1/batch).

    batchsvc submit FILE --model M [--wait]    prints the job id; --wait follows the job
                   [--reuse latest --name N | --reuse-from ID ...] [--force]
    batchsvc status ID [--wait]                prints the job as JSON; --wait follows it first
    batchsvc results ID -o FILE [--errors FILE] [--partial]
    batchsvc cancel ID                         prints the job's new status
    batchsvc list [--limit N] [--after ID]     a table of jobs, newest first
    batchsvc report costs [--since 7d]         per model: req/s, time and cost of 170K requests
    batchsvc estimate FILE --model M           dry run: tokens, reused answers, duration and cost

Admin keys also manage keys and tenants:
    batchsvc keys create --tenant T --role viewer|submitter|admin [--name N]   prints the key, once
    batchsvc keys list [--tenant T]
    batchsvc keys revoke KEY_ID
    batchsvc tenants show T
    batchsvc tenants set T [--max-active-jobs N] [--max-queued-requests N] [--rate-limit 600/minute]
                           [--ip-allow CIDR ...] [--clear FIELD ...]
    batchsvc tenants rotate-webhook-secret T   prints the new secret, once

The server comes from --url or BATCHSVC_URL (default http://127.0.0.1:8000), the
API key from --api-key or BATCHSVC_API_KEY (sent as `Authorization: Bearer`).
Machine-readable output goes to stdout; the progress bar and messages to stderr.

Exit codes:
    0  completed, or the command did what it was asked
    1  failed
    2  usage, API or connection error (the API's error type and message on stderr)
    3  cancelled or expired
`submit --wait` and `status` exit with the code of the job's status once the job
has ended. Ctrl-C while following a job exits 130 and leaves the job running.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import click
import orjson
import requests

from batchsvc.access import ROLE_NAMES

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
ENDED = {"completed": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_STOPPED, "expired": EXIT_STOPPED}


class ApiError(click.ClickException):
    """An answer of the server that is not a success, or no answer at all."""

    exit_code = EXIT_ERROR


class CatalogError(click.ClickException):
    """A local model catalogue that cannot take the change asked for."""

    exit_code = EXIT_ERROR


class Client:
    def __init__(self, url: str, api_key: str | None, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ApiError(f"cannot reach {urlsplit(url).netloc}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                message = f"{error['type']}: {error['message']}"
            except (ValueError, KeyError, TypeError):  # not our envelope: a proxy or the object store
                message = f"HTTP {response.status_code} from {method} {urlsplit(url).path}"
            response.close()
            raise ApiError(message)
        return response

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._send(method, self.url + path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ApiError(f"{method} {path}: HTTP {response.status_code}, not JSON") from None

    def download(self, url: str, path: Path) -> int:
        """Save a results link to `path`; returns its number of lines."""
        url = urljoin(self.url + "/", url)  # a relative link is relative to the API
        # The key is for our server only: a presigned object-store link carries its own signature.
        ours = urlsplit(url)[:2] == urlsplit(self.url)[:2]
        headers = None if ours else {"Authorization": None}
        part = path.with_name(path.name + ".part")  # so a broken download never looks like a whole file
        lines = 0
        try:
            with self._send("GET", url, stream=True, headers=headers) as response, part.open("wb") as out:
                for chunk in response.iter_content(1024 * 1024):
                    out.write(chunk)
                    lines += chunk.count(b"\n")
        except requests.RequestException as exc:
            part.unlink(missing_ok=True)
            raise ApiError(f"download of {path.name} broke off: {type(exc).__name__}") from None
        part.replace(path)
        return lines


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _done(job: dict[str, Any]) -> int:
    return job["progress"]["completed"] + job["progress"]["failed"]


def progress_line(job: dict[str, Any], width: int = 30) -> str:
    """`[#####.....] 40/100 (40%)  12.5 req/s  ETA 00:05  in_progress`"""
    total, rate = job["progress"]["total"], job["throughput"]
    done = _done(job)
    filled = min(width, width * done // total) if total else 0
    req_per_sec = f"{rate['req_per_sec']:.1f} req/s" if rate["req_per_sec"] else "-- req/s"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total if total is not None else '?'} "
        f"({job['progress']['percent']:.0f}%)  {req_per_sec}  ETA {_clock(rate['estimated_remaining'])}  "
        f"{job['status']}"
    )


def follow(client: Client, job_id: str, interval: float = 1.0) -> dict[str, Any]:
    """Poll a job until it ends, drawing its progress on stderr; returns its last view."""
    tty = sys.stderr.isatty()
    last_line, last_state = "", None
    try:
        while True:
            job = client.call("GET", f"/v1/batch/{job_id}")
            line, state = progress_line(job), (job["status"], _done(job))
            if tty:  # redraw in place
                click.echo("\r" + line.ljust(len(last_line)), nl=False, err=True)
            elif state != last_state:  # a log: one line per change, not one per poll
                click.echo(line, err=True)
            last_line, last_state = line, state
            if job["status"] in ENDED:
                if tty:
                    click.echo(err=True)
                return job
            time.sleep(interval)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following {job_id}; it keeps running (`batchsvc cancel {job_id}` stops it)", err=True)
        sys.exit(EXIT_INTERRUPTED)


def summary(job: dict[str, Any]) -> str:
    """How a job ended: its counts, or the lines that failed its validation."""
    if not job.get("errors"):
        p = job["progress"]
        return f"job {job['status']}: {p['completed']} succeeded, {p['failed']} failed of {p['total']}"
    shown = job["errors"][:10]
    text = f"job {job['status']}:" + "".join(f"\n  line {e.get('line')}: {e.get('message')}" for e in shown)
    if job.get("error_count", len(shown)) > len(shown):
        text += f"\n  ... {job['error_count'] - len(shown)} more"
    return text


@click.group()
@click.option("--url", envvar="BATCHSVC_URL", default="http://127.0.0.1:8000", show_default=True)
@click.option("--api-key", envvar="BATCHSVC_API_KEY", default=None, help="sent as Authorization: Bearer")
@click.pass_context
def main(ctx: click.Context, url: str, api_key: str | None) -> None:
    """Submit and follow batch jobs on a batchsvc server."""
    ctx.obj = Client(url, api_key)


def _reuse_options(command: Any) -> Any:
    command = click.option("--force", is_flag=True, help="reuse nothing")(command)
    command = click.option("--reuse-from", multiple=True, help="a job whose answers to reuse (repeatable)")(command)
    return click.option(
        "--reuse", type=click.Choice(["latest"]), default=None, help="reuse the latest run of the same --name"
    )(command)


def _reuse_form(reuse: str | None, reuse_from: tuple[str, ...], force: bool) -> dict[str, str]:
    form = {"reuse": reuse or "", "reuse_from": ",".join(reuse_from), "force": "true" if force else ""}
    return {k: v for k, v in form.items() if v}


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", required=True, help="a model alias of the server, e.g. qwen3-4b")
@click.option("--webhook-url", default=None)
@click.option("--name", "job_name", default=None, help="metadata.job_name")
@click.option(
    "--priority",
    type=click.Choice(["high", "normal", "low", *map(str, range(10))]),
    default=None,
    help="high, normal, low, or 0-9; higher runs sooner",
)
@click.option("--wait", is_flag=True, help="follow the job with a progress bar until it ends")
@_reuse_options
@click.pass_obj
def submit(
    client: Client,
    file: Path,
    model: str,
    webhook_url: str | None,
    job_name: str | None,
    priority: str | None,
    wait: bool,
    reuse: str | None,
    reuse_from: tuple[str, ...],
    force: bool,
) -> None:
    """Upload FILE (OpenAI batch JSONL) as a new job and print its id."""
    sent = int(priority) if priority and priority.isdigit() else priority  # a digit goes as the number
    metadata = {k: v for k, v in {"job_name": job_name, "priority": sent}.items() if v is not None}
    form = {"model": model, "metadata": orjson.dumps(metadata).decode(), **_reuse_form(reuse, reuse_from, force)}
    if webhook_url:
        form["webhook_url"] = webhook_url
    with file.open("rb") as fh:
        job = client.call("POST", "/v1/batch", data=form, files={"file": (file.name, fh, "application/jsonl")})
    click.echo(job["job_id"])
    if wait:
        job = follow(client, job["job_id"])
        click.echo(summary(job), err=True)
        sys.exit(ENDED[job["status"]])


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", required=True, help="a model alias of the server")
@click.option("--name", "job_name", default=None, help="metadata.job_name (what --reuse latest looks for)")
@click.option("--completion-window", default=None, help="e.g. 24h: warn if the estimate cannot meet it")
@click.option("--timeout", type=float, default=600, show_default=True, help="seconds to wait for the estimate")
@_reuse_options
@click.pass_obj
def estimate(
    client: Client,
    file: Path,
    model: str,
    job_name: str | None,
    completion_window: str | None,
    timeout: float,
    reuse: str | None,
    reuse_from: tuple[str, ...],
    force: bool,
) -> None:
    """Dry run: validate FILE, count its prompt tokens and reusable answers, and
    print the estimated duration and cost as JSON. Nothing runs; nothing is kept."""
    metadata = {"job_name": job_name} if job_name else {}
    form = {"model": model, "dry_run": "true", "metadata": orjson.dumps(metadata).decode()}
    form.update(_reuse_form(reuse, reuse_from, force))
    if completion_window:
        form["completion_window"] = completion_window
    with file.open("rb") as fh:
        queued = client.call("POST", "/v1/batch", data=form, files={"file": (file.name, fh, "application/jsonl")})
    deadline = time.monotonic() + timeout
    result = queued
    while result["status"] == "queued":
        if time.monotonic() > deadline:
            raise ApiError(f"no estimate after {timeout:.0f}s (is a cpu worker running?)")
        time.sleep(0.5)
        result = client.call("GET", queued["url"])
    client.call("DELETE", queued["url"])  # read once: nothing of the dry run stays
    click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    for warning in result.get("warnings") or []:
        click.echo(f"warning: {warning}", err=True)
    if result["status"] != "done":
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="follow the job until it ends, then print it")
@click.pass_obj
def status(client: Client, job_id: str, wait: bool) -> None:
    """Print a job as JSON."""
    job = follow(client, job_id) if wait else client.call("GET", f"/v1/batch/{job_id}")
    click.echo(orjson.dumps(job, option=orjson.OPT_INDENT_2).decode())
    if wait:
        click.echo(summary(job), err=True)
    if job["status"] in ENDED:
        sys.exit(ENDED[job["status"]])


@main.command()
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--errors", type=click.Path(dir_okay=False, path_type=Path), default=None, help="save failed requests")
@click.option("--partial", is_flag=True, help="while the job runs, download what has finished so far")
@click.pass_obj
def results(client: Client, job_id: str, output: Path, errors: Path | None, partial: bool) -> None:
    """Download a job's results (and errors) as JSONL files."""
    info = client.call("GET", f"/v1/batch/{job_id}/results", params={"partial": "true"} if partial else None)
    if info.get("partial"):
        stats = info["stats"]
        done = stats["successful"] + stats["failed"]
        click.echo(f"{job_id} is {info['status']}: {done} of {stats['total']} finished so far", err=True)
    click.echo(f"{output}: {client.download(info['results_url'], output)} lines", err=True)
    if errors is not None:
        if info.get("errors_url"):
            click.echo(f"{errors}: {client.download(info['errors_url'], errors)} lines", err=True)
        else:  # no errors object: no failed requests
            errors.write_bytes(b"")
            click.echo(f"{errors}: 0 lines", err=True)


@main.command()
@click.argument("job_id")
@click.pass_obj
def cancel(client: Client, job_id: str) -> None:
    """Cancel a job and print its new status (cancelling, then cancelled)."""
    click.echo(client.call("POST", f"/v1/batch/{job_id}/cancel")["status"])


@main.command("list")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--after", default=None, help="the last job id of the previous page")
@click.pass_obj
def list_jobs(client: Client, limit: int, after: str | None) -> None:
    """List jobs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if after:
        params["after"] = after
    page = client.call("GET", "/v1/batch", params=params)
    rows = [("ID", "STATUS", "MODEL", "DONE/TOTAL", "CREATED")]
    for job in page["data"]:
        total = job["progress"]["total"]
        done = f"{_done(job)}/{total if total is not None else '?'}"
        rows.append((job["job_id"], job["status"], job["model"], done, (job["created_at"] or "").replace("T", " ")))
    _table(rows)
    if page["has_more"]:
        click.echo(f"more: batchsvc list --after {page['last_id']}", err=True)


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


_SINCE = {"m": 60, "h": 3600, "d": 86400}


def since_seconds(value: str, now: float | None = None) -> float:
    """'7d', '12h', '30m' (ago) or an ISO date/time (UTC if it names no zone) -> unix seconds."""
    from datetime import UTC, datetime

    now = time.time() if now is None else now
    if value[:-1].isdigit() and value[-1:] in _SINCE:
        return now - int(value[:-1]) * _SINCE[value[-1]]
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use 7d, 12h, 30m or an ISO date like 2026-12-01") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


@main.group()
def report() -> None:
    """Reports over finished jobs."""


@report.command("costs")
@click.option("--since", default=None, help="7d, 12h, 30m or an ISO date (default: all jobs)")
@click.pass_obj
def report_costs(client: Client, since: str | None) -> None:
    """Per model: measured req/s, the time and cost of 170K requests, and what was spent."""
    params = {"since": repr(since_seconds(since))} if since else None
    rows = [("MODEL", "JOBS", "REQUESTS", "REUSED", "ENGINE_S", "REQ/S", "TIME_170K", "COST_170K", "$/GPU-H", "SPENT")]
    for row in client.call("GET", "/v1/reports/costs", params=params)["data"]:
        hours = row["hours_for_170k"]
        rows.append(
            (
                row["model"],
                _cell(row["jobs"]),
                _cell(row["requests"]),
                _cell(row["reused"]),
                _cell(row["engine_seconds"], 1),
                _cell(row["req_per_sec"], 1),
                _clock(hours * 3600) if hours is not None else "-",
                _cell(row["cost_for_170k"], 4),
                _cell(row["gpu_hour_price"]),
                _cell(row["cost"], 6),
            )
        )
    _table(rows)


@main.group()
def keys() -> None:
    """Create, list and revoke API keys (admin keys only)."""


@keys.command("create")
@click.option("--tenant", required=True)
@click.option("--role", type=click.Choice(ROLE_NAMES), required=True)
@click.option("--name", default="", help="what the key is for, shown by `keys list`")
@click.pass_obj
def keys_create(client: Client, tenant: str, role: str, name: str) -> None:
    """Make a key and print it. It is shown this once: the server keeps only a hash."""
    made = client.call("POST", "/v1/keys", json={"tenant": tenant, "role": role, "name": name})
    click.echo(made["key"])
    click.echo(f"{made['id']}: {role} of tenant {tenant}; store the key now, it is not shown again", err=True)


@keys.command("list")
@click.option("--tenant", default=None)
@click.pass_obj
def keys_list(client: Client, tenant: str | None) -> None:
    """The keys, newest first, without the keys themselves."""
    page = client.call("GET", "/v1/keys", params={"tenant": tenant} if tenant else None)
    rows = [("ID", "TENANT", "ROLE", "STARTS", "NAME", "REVOKED")]
    for k in page["data"]:
        rows.append((k["id"], k["tenant"], k["role"], k["hint"], k["name"], "yes" if k["revoked_at"] else ""))
    _table(rows)


@keys.command("revoke")
@click.argument("key_id")
@click.pass_obj
def keys_revoke(client: Client, key_id: str) -> None:
    """Revoke a key: from the next request on, it answers 401."""
    client.call("DELETE", f"/v1/keys/{key_id}")
    click.echo(f"{key_id} revoked", err=True)


@main.group()
def admin() -> None:
    """Back up and restore the job state (admin keys only)."""


@admin.command("backup")
@click.pass_obj
def admin_backup(client: Client) -> None:
    """Write a snapshot of every job, file, key and tenant record to storage."""
    made = client.call("POST", "/v1/admin/backup")
    click.echo(made["key"])
    click.echo(f"{made['jobs']} jobs, {made['keys']} records", err=True)


@admin.command("restore")
@click.option("--backup", "key", default=None, help="a key `admin backup` printed (default: the latest)")
@click.pass_obj
def admin_restore(client: Client, key: str | None) -> None:
    """Write back every record of a backup that Redis lacks (e.g. into an empty Redis)."""
    done = client.call("POST", "/v1/admin/restore", json={"backup": key} if key else {})
    click.echo(f"{done['key']}: {done['restored']} records restored ({done['jobs']} jobs), {done['skipped']} present")


@main.group()
def tenants() -> None:
    """Show and set a tenant's quotas, rate limit, IP allowlist and webhook secret (admin keys only)."""


def _print(body: dict[str, Any]) -> None:
    click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())


@tenants.command("show")
@click.argument("tenant")
@click.pass_obj
def tenants_show(client: Client, tenant: str) -> None:
    _print(client.call("GET", f"/v1/tenants/{tenant}"))


@tenants.command("set")
@click.argument("tenant")
@click.option("--max-active-jobs", type=click.IntRange(1), default=None)
@click.option("--max-queued-requests", type=click.IntRange(1), default=None)
@click.option("--rate-limit", default=None, help="requests per key, e.g. 600/minute")
@click.option("--ip-allow", "ip_allow", multiple=True, help="a CIDR the tenant's calls may come from (repeatable)")
@click.option(
    "--clear",
    multiple=True,
    type=click.Choice(["max_active_jobs", "max_queued_requests", "rate_limit", "ip_allowlist"]),
    help="return a field to the deployment default (repeatable)",
)
@click.pass_obj
def tenants_set(
    client: Client,
    tenant: str,
    max_active_jobs: int | None,
    max_queued_requests: int | None,
    rate_limit: str | None,
    ip_allow: tuple[str, ...],
    clear: tuple[str, ...],
) -> None:
    """Set what is given; leave the rest as it is."""
    body: dict[str, Any] = {name: None for name in clear}
    given = {"max_active_jobs": max_active_jobs, "max_queued_requests": max_queued_requests, "rate_limit": rate_limit}
    body.update({k: v for k, v in given.items() if v is not None})
    if ip_allow:
        body["ip_allowlist"] = list(ip_allow)
    if not body:
        raise click.UsageError("nothing to set")
    _print(client.call("PATCH", f"/v1/tenants/{tenant}", json=body))


@tenants.command("rotate-webhook-secret")
@click.argument("tenant")
@click.pass_obj
def tenants_rotate(client: Client, tenant: str) -> None:
    """Give the tenant a new webhook signing secret and print it. The old one
    keeps signing too until the time shown, so receivers can switch over."""
    made = client.call("POST", f"/v1/tenants/{tenant}/webhook_secret")
    click.echo(made["secret"])
    click.echo(f"the previous secret stays valid until {made['previous_valid_until']} (unix time)", err=True)


@main.group()
def workers() -> None:
    """See the LLM workers and move them between models (admin keys only)."""


@workers.command("list")
@click.pass_obj
def workers_list(client: Client) -> None:
    """Each live LLM worker: its model, state, current shard and last engine load."""
    rows = [("NAME", "MODEL", "STATE", "SHARD", "LOADED", "LOAD_S", "SHARDS")]
    for w in client.call("GET", "/v1/admin/workers")["data"]:
        loaded = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(w["engine_loaded_at"])) if w["engine_loaded_at"] else "-"
        )
        model = w["model"] or "-"
        if w.get("swap_to"):
            model += f" -> {w['swap_to']}"
        load_s = f"{w['engine_load_s']:.1f}" if w["engine_load_s"] is not None else "-"
        rows.append((w["name"], model, w["state"], w["current_shard"] or "-", loaded, load_s, str(w["shards_run"])))
    _table(rows)


@workers.command("swap")
@click.argument("name")
@click.argument("model")
@click.pass_obj
def workers_swap(client: Client, name: str, model: str) -> None:
    """Move worker NAME (e.g. llm-gpu0@host) to MODEL without restarting it. It
    finishes its current shard first; `batchsvc workers list` shows when it is done."""
    client.call("POST", f"/v1/admin/workers/{name}/model", json={"model": model})
    click.echo(f"{name} will move to {model} after its current shard", err=True)


@main.group()
def models() -> None:
    """Edit this host's model catalogue (configs/models.yaml)."""


@models.command("add")
@click.argument("name_or_path")
@click.option("--alias", default=None, help="the name jobs use (default: the model's own name, lower-cased)")
@click.option(
    "--file",
    "models_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="BATCHSVC_MODELS_FILE",
    default="configs/models.yaml",
    show_default=True,
)
def models_add(name_or_path: str, alias: str | None, models_file: Path) -> None:
    """Add NAME_OR_PATH (a Hugging Face id or a local model directory) to the catalogue.
    A local directory's config.json sizes the engine settings; a hub name gets
    conservative ones. The API and the workers read the entry when they start."""
    from batchsvc.inference.models import ModelConfigError, add_model  # a local edit, not an API call

    try:
        added, entry, how = add_model(models_file, name_or_path, alias)
    except (ModelConfigError, OSError) as exc:
        raise CatalogError(str(exc)) from None
    click.echo(added)
    click.echo(f"added {added} ({entry['model']}) to {models_file}: {how}", err=True)


if __name__ == "__main__":
    main()
