"""`python -m app demo`: the whole loop on the embedded default, in a fresh DATA_DIR, with live progress.

The service and the example workers run as their own processes, started the way an operator would start them;
this process only pushes tasks, asks for one replenish and watches GET /api/stats.
"""

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

import app
from app.config import Settings
from app.paths import DataDir

ROOT = Path(app.__file__).resolve().parents[1]
INGEST_CHUNK = 1_000
MAX_REPLENISH_BATCH = 10_000  # the ceiling of Settings.replenish_batch_size
STATUSES = ("PENDING", "PROCESSING", "SUCCESS", "FAILED")

Child = tuple[subprocess.Popen, Path]


class DemoFailed(Exception):
    """A step could not go on; the message says which and why."""


def run_demo(tasks: int, workers: int, console: Console) -> int:
    """Push `tasks` through the service and `workers` example workers; 0 when every task ended SUCCESS or FAILED."""
    data_dir = Path(tempfile.mkdtemp(prefix="tm-demo-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it would log every stats poll
    console.print(f"DATA_DIR {data_dir}", soft_wrap=True)
    console.print(f"service {url}, {workers} workers, {tasks:,} tasks", soft_wrap=True)
    env = _child_env(data_dir, tasks, url)
    for signum in (signal.SIGTERM, signal.SIGHUP):  # the children have their own session: only we can stop them
        signal.signal(signum, signal.default_int_handler)
    children: list[Child] = []
    try:
        service = ["uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
        children.append(_start(service, env, DataDir(data_dir).service_log))
        with httpx.Client(base_url=url, timeout=300) as client:
            _wait_healthy(client, children[0])
            for n in range(workers):
                worker = ["celery", "-A", "examples.worker", "worker", "-Q", "celery", "-c", "1", "--pool", "threads"]
                worker += ["--without-mingle", "--without-gossip", "--loglevel", "WARNING", "-n", f"demo{n}@%h"]
                children.append(_start(worker, env, DataDir(data_dir).worker_log(n)))
            counts, elapsed = _push_and_watch(client, tasks, children, console)
    except (DemoFailed, httpx.HTTPError) as exc:
        console.print(f"demo failed: {exc}", style="red", markup=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        return 130
    finally:
        _stop(children)
        console.print(f"kept {data_dir} (tasks.db, service.log, worker-*.log)", soft_wrap=True)

    finished = counts["SUCCESS"] + counts["FAILED"]
    summary = Table("", "", title="demo summary", show_header=False)
    summary.add_row("tasks", f"{tasks:,}")
    summary.add_row("SUCCESS", f"{counts['SUCCESS']:,}")
    summary.add_row("FAILED", f"{counts['FAILED']:,}")
    summary.add_row("elapsed seconds", f"{elapsed:.1f}")
    summary.add_row("tasks per second", f"{finished / elapsed:.1f}")
    unfinished = tasks - finished
    summary.add_row("all accounted for", f"[red]no: {unfinished:,} unfinished[/red]" if unfinished else "yes")
    console.print(summary)
    return 1 if unfinished else 0


def _child_env(data_dir: Path, tasks: int, url: str) -> dict[str, str]:
    settings = {name.upper() for name in Settings.model_fields}
    inherited = {name: value for name, value in os.environ.items() if name.upper() not in settings}
    return inherited | {
        "DATA_DIR": str(data_dir),
        "STORE": "sqlite",
        "REPLENISH_BATCH_SIZE": str(min(tasks, MAX_REPLENISH_BATCH)),
        "REPLENISH_THRESHOLD": str(tasks),  # the depth of our own earlier cycles must not stop the next one
        "SCHEDULER_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        "TASK_MANAGER_URL": url,
        "WORKER_FAIL_RATE": "0.1",
        "WORKER_SLEEP_SECONDS": "0.02",
    }


def _push_and_watch(
    client: httpx.Client, tasks: int, children: list[Child], console: Console
) -> tuple[dict[str, int], float]:
    """Ingest, replenish, then poll the counts until every task finished or the deadline passed."""
    with Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), console=console) as progress:
        started = time.monotonic()
        ingest = progress.add_task("ingest", total=tasks)
        for first in range(0, tasks, INGEST_CHUNK):
            payloads = [{"alpha": f"demo_{i}", "region": "USA"} for i in range(first, min(first + INGEST_CHUNK, tasks))]
            _answer(client.post("/api/tasks/ingest", json=payloads))
            progress.advance(ingest, len(payloads))

        published = 0
        while published < tasks:
            report = _answer(client.post("/api/replenish"))
            if report["outcome"] != "published":
                raise DemoFailed(f"replenish answered {report}")
            published += report["published"]
        progress.console.print(f"replenish published {published:,} tasks")

        finished = progress.add_task("finished", total=tasks)
        rows = {status: progress.add_task(status, total=tasks) for status in STATUSES}
        deadline = started + max(120, tasks / 5)
        while True:
            counts = _answer(client.get("/api/stats"))["counts"]
            done = counts["SUCCESS"] + counts["FAILED"]
            progress.update(finished, completed=done)
            for status, row in rows.items():
                progress.update(row, completed=counts[status])
            if done >= tasks:
                return counts, time.monotonic() - started
            if time.monotonic() > deadline:
                progress.console.print(f"[red]deadline passed with {tasks - done:,} tasks unfinished[/red]")
                return counts, time.monotonic() - started
            for child in children:
                _check_running(child)
            time.sleep(0.25)


def _answer(response: httpx.Response) -> dict:
    if response.is_error:
        request = response.request
        raise DemoFailed(f"{request.method} {request.url.path} answered {response.status_code}: {response.text}")
    return response.json()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(module_args: list[str], env: dict[str, str], log_path: Path) -> Child:
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", *module_args],
            env=env,
            cwd=log_path.parent,  # DATA_DIR, not the repository root: a developer's .env must not reach the demo
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us alone, so we stop the workers before the service
        )
    return proc, log_path


def _check_running(child: Child) -> None:
    proc, log_path = child
    if proc.poll() is not None:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise DemoFailed(f"{proc.args[2]} exited with {proc.returncode}; the end of {log_path}:\n{tail}")


def _wait_healthy(client: httpx.Client, service: Child, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_running(service)
        try:
            if client.get("/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise DemoFailed(f"the service did not answer /healthz within {timeout:.0f} s; see {service[1]}")


def _stop(children: list[Child]) -> None:
    """The workers first, while the service can still take their last reports; kill whatever outlives its turn."""
    procs = [proc for proc, _ in children]
    try:
        for turn in (procs[1:], procs[:1]):
            for proc in turn:  # all at once: a worker's warm shutdown takes seconds
                if proc.poll() is None:
                    proc.terminate()
            for proc in turn:
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
    finally:  # also when a second Ctrl-C cuts the wait short
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
