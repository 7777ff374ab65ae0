"""Run the service and the example worker as real processes, the way an operator would."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    """Poll an outside process's effect until it shows or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _env(env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env}


def stop(proc: subprocess.Popen, timeout: float = 15) -> int:
    """SIGTERM, which a background job receives (it ignores SIGINT), then SIGKILL; answers the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def run_to_end(args: list[str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess:
    """subprocess.run for a command that starts processes of its own: in its own process group, so one that
    overruns (or a test interrupted meanwhile) is stopped with everything it started, SIGTERM first."""
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:
            _stop_group(proc)
            raise
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def _stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)  # whatever outlived its turn
    proc.wait()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


@contextmanager
def service_process(env: dict[str, str], workdir: Path, port: int | None = None) -> Iterator[str]:
    """`python -m app serve`, the command the Docker image runs; yields its base URL once /healthz answers."""
    with running_service(env, workdir, port) as (url, _):
        yield url


@contextmanager
def running_service(
    env: dict[str, str],
    workdir: Path,
    port: int | None = None,
    name: str | None = None,
    argv: list[str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Like service_process, but hands out the process too, for a test that kills it; `argv` (which gets
    `--port`) starts another command than the image's."""
    port = port or free_port()
    log_path = workdir / f"service-{name or port}.log"
    command = argv or [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*command, "--port", str(port)],
            env=_env(env),
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"service exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 60, f"the {name or 'service'} to answer /healthz")
        yield url, proc
    finally:
        stop(proc)


@contextmanager
def worker_process(env: dict[str, str], workdir: Path, queue: str, concurrency: int = 2) -> Iterator[Path]:
    """examples/worker.py under `celery worker`, started in workdir (where its .env is); yields its log path."""
    log_path = workdir / f"worker-{queue}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "examples.worker",
                "worker",
                "-Q",
                queue,
                "-c",
                str(concurrency),
                "--pool",
                "threads",
                "--without-mingle",
                "--without-gossip",
                "--loglevel",
                "INFO",
            ],
            env=_env(env),
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield log_path
    finally:
        stop(proc)


_CLAIMER = """
import sys, time
from pathlib import Path
from app.claims import ClaimJournal
journal = ClaimJournal(Path(sys.argv[1]))
journal.open()
journal.begin([(sys.argv[2], 0)])
print("claimed", flush=True)
time.sleep(600)
"""


@contextmanager
def claiming_child(path: Path, record_id: str) -> Iterator[subprocess.Popen]:
    """A real process that journals a claim and then hangs, as a cycle does between claim and publish."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CLAIMER, str(path), record_id], stdout=subprocess.PIPE, cwd=ROOT, text=True
    )
    try:
        assert child.stdout.readline().strip() == "claimed"
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)


def process_state(pid: int) -> str:
    """R, S, Z (a zombie: dead, not yet reaped)… as /proc shows it."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
