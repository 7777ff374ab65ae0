"""No secret in any log line, at DEBUG too, the SDK's own lines included; every line is JSON with a request id."""

import io
import json
import logging
import re

import pytest
from fastapi.testclient import TestClient

from app.logs import Redactor, configure_logging
from app.main import create_app
from tests.support.settings import bitable_settings

API_KEY = "scraper-key-5f1c9e0d"
BOT_SECRET = "bot-secret-a8d2c"
BOT_TOKEN = "2f6a9c1e-hook-token"


@pytest.fixture
def captured():
    stream = io.StringIO()
    yield stream
    for handler in [h for h in logging.getLogger().handlers if h.get_name() == "task-manager"]:
        logging.getLogger().removeHandler(handler)


def test_debug_logs_of_a_whole_session_carry_no_secret(feishu, tmp_path, captured, monkeypatch):
    feishu.add_bot(BOT_TOKEN, secret=BOT_SECRET)
    settings = bitable_settings(
        feishu,
        tmp_path / "data",
        api_keys=API_KEY,
        log_level="DEBUG",
        feishu_robot_webhook_url=f"{feishu.url}/open-apis/bot/v2/hook/{BOT_TOKEN}",
        feishu_robot_secret=BOT_SECRET,
        celery_broker_url="amqp://tm-user:broker-pass-77@127.0.0.1:1//",
        broker_timeout_seconds=0.5,
    )
    monkeypatch.setattr("app.main.configure_logging", lambda s: configure_logging(s, captured))
    headers = {"X-API-Key": API_KEY}
    with TestClient(create_app(settings)) as client:
        logging.getLogger("httpx").setLevel(logging.DEBUG)  # an operator turns it up: it logs the webhook URL
        client.post("/api/tasks/ingest", json=[{"n": n} for n in range(3)], headers=headers)
        client.post("/api/tasks/ingest", json=[{"n": 9}], headers={"Authorization": f"Bearer {API_KEY}"})
        client.post("/api/tasks/ingest", json=[{"n": 9}], headers={"X-API-Key": API_KEY + "-wrong"})
        feishu.expire_tokens()  # a second tenant token goes through the logs too
        client.get("/api/tasks", headers=headers)
        client.post("/api/replenish", headers=headers)  # the broker is down: an error card to the signed bot
        client.get("/readyz")
    output = captured.getvalue()
    assert feishu.count("token") == 2 and len(feishu.bot_messages(BOT_TOKEN)) == 1
    assert any(json.loads(line)["logger"] == "Lark" for line in output.splitlines()), "the SDK's own lines"
    assert "/bot/v2/hook/***" in output, "the webhook URL was logged, and redacted"
    for secret in (feishu.app_secret, API_KEY, BOT_SECRET, BOT_TOKEN, "broker-pass-77"):
        assert secret not in output, secret
    assert not re.search(r"\bt-[0-9a-f]{8}-", output), "a tenant access token"
    lines = [json.loads(line) for line in output.splitlines()]
    requests = [line for line in lines if line["logger"] == "app.http"]
    assert len(requests) == 6 and all(len(line["request_id"]) == 16 for line in requests)
    assert {line["level"] for line in lines} >= {"DEBUG", "INFO", "WARNING"}


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Authorization: Bearer abc.def-123", "abc.def-123"),
        ("token t-g1044qe8QWERTYUIOP used", "t-g1044qe8QWERTYUIOP"),
        ('{"app_secret": "xyz12345"}', "xyz12345"),
        ("amqp://user:pa55word@host:5672//", "pa55word"),
        ("POST https://open.feishu.cn/open-apis/bot/v2/hook/abcd-efgh", "abcd-efgh"),
        ("the key is key-one-0123", "key-one-0123"),
    ],
)
def test_the_redactor_knows_each_shape_of_secret(text, leak):
    assert leak not in Redactor(["key-one-0123"]).redact(text)


def test_an_exception_traceback_is_redacted_too(captured, tmp_path):
    from tests.support.settings import make_settings

    configure_logging(make_settings(tmp_path, api_keys="very-secret-key-1"), captured)
    try:
        raise RuntimeError("failed with very-secret-key-1")
    except RuntimeError:
        logging.getLogger("app.test").exception("boom")
    assert "very-secret-key-1" not in captured.getvalue()
    assert "RuntimeError" in captured.getvalue()


FORGED = '\n{"level": "CRITICAL", "msg": "forged"}\n'
# C0, DEL, C1 (NEL), the Unicode line and paragraph separators, and the bidirectional overrides and isolates
UNSAFE = "\r\x1b\x7f\x85\u2028\u2029\u202a\u202e\u2066\u2069"
HOSTILE = FORGED + UNSAFE


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_hostile_request_path_stays_on_one_escaped_line(tmp_path, captured, monkeypatch, log_format):
    from urllib.parse import quote

    from tests.support.settings import make_settings

    settings = make_settings(tmp_path / "data", log_format=log_format)
    monkeypatch.setattr("app.main.configure_logging", lambda s: configure_logging(s, captured))
    with TestClient(create_app(settings)) as client:
        start = len(captured.getvalue())
        client.get("/api/tasks/" + quote("x" + HOSTILE, safe=""))
        output = captured.getvalue()[start:]
    lines = output.split("\n")[:-1]  # only "\n" ends a line: every other breaker must be escaped
    assert len(lines) == 1, output
    assert not any(ch in output for ch in UNSAFE), ascii(output)
    assert "forged" in output and "\\n" in output and "\\u2028" in output and "\\u202e" in output
    if log_format == "json":
        line = json.loads(lines[0])
        assert line["level"] == "INFO" and line["logger"] == "app.http"
