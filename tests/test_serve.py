"""The server we ship, as real processes: `python -m app serve` (the image's command) and plain uvicorn."""

import collections
import json
import socket
import sys

import httpx
import pytest

from tests.support import processes

SECRET = "serve-secret-key-4e7b1c"


@pytest.mark.parametrize("command", ["serve", "uvicorn"])
def test_each_line_is_logged_once_and_redacted(tmp_path, command):
    env = {"DATA_DIR": str(tmp_path / "data"), "API_KEYS": SECRET, "SCHEDULER_ENABLED": "false"}
    argv = None if command == "serve" else [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
    with processes.running_service(env, tmp_path, name=command, argv=argv) as (url, _):
        assert httpx.get(f"{url}/x/{SECRET}").status_code == 404
        assert httpx.get(f"{url}/api/tasks", headers={"X-API-Key": SECRET}).status_code == 200
    output = (tmp_path / f"service-{command}.log").read_text()
    assert SECRET not in output
    lines = [line for line in output.splitlines() if line.strip()]
    repeated = [line for line, count in collections.Counter(lines).items() if count > 1]
    assert not repeated, output
    requests = [json.loads(line) for line in lines if '"app.http"' in line]
    assert [r["msg"].split()[:3] for r in requests][-2:] == [["GET", "/x/***", "404"], ["GET", "/api/tasks", "200"]]


def test_connections_over_the_limit_are_refused_with_a_503_and_logged(tmp_path):
    env = {"DATA_DIR": str(tmp_path / "data"), "SERVER_LIMIT_CONCURRENCY": "2", "SCHEDULER_ENABLED": "false"}
    with processes.running_service(env, tmp_path, name="limited") as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)), socket.create_connection(("127.0.0.1", port)):
            # two idle connections, like clients that send their headers slowly: the third request is refused
            refused = httpx.get(f"{url}/healthz")
        assert refused.status_code == 503
        # the server notices the two closes on its own time: poll it
        processes.wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 10, "the limit to free up")
    output = (tmp_path / "service-limited.log").read_text()
    warnings = [json.loads(line) for line in output.splitlines() if "concurrency limit" in line]
    assert len(warnings) == 1 and warnings[0]["level"] == "WARNING", output
