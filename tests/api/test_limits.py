"""Request bodies are bounded and the API key is checked before a byte of the body is read.

Driven as raw ASGI, so the test sees exactly how much of the body the app pulled."""

import json
from collections.abc import Iterator

import pytest

from app.main import create_app
from tests.support.settings import make_settings

KEY = "limits-key-0123456789"
LIMIT = 4096


class Call:
    """One request: its body handed out chunk by chunk on demand, and the answer collected."""

    def __init__(self, chunks: Iterator[bytes]):
        self.chunks = chunks
        self.pulled = 0
        self.messages: list[dict] = []

    async def receive(self) -> dict:
        chunk = next(self.chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        self.pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(self, message: dict) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.messages if m["type"] == "http.response.start")

    @property
    def body(self) -> dict:
        return json.loads(b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"))


@pytest.fixture
async def app(tmp_path, request):
    keys = getattr(request, "param", "")
    app = create_app(make_settings(tmp_path / "data", api_keys=keys, max_request_bytes=LIMIT))
    async with app.router.lifespan_context(app):
        yield app


async def call(app, chunks: Iterator[bytes], *, path="/api/tasks/ingest", method="POST", **headers: str) -> Call:
    sent = Call(chunks)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")]
        + [(name.replace("_", "-").lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, sent.receive, sent.send)
    return sent


def endless(chunk: bytes = b" " * 1024) -> Iterator[bytes]:
    """More than any limit (20 MB), but not unbounded: an app that reads it all still finishes."""
    for _ in range(20_000):
        yield chunk


def body_of(payloads: list) -> Iterator[bytes]:
    text = json.dumps(payloads).encode()
    return iter([text[i : i + 1000] for i in range(0, len(text), 1000)])


async def test_a_body_declared_too_large_is_refused_before_a_byte_is_read(app):
    answer = await call(app, endless(), content_length="50000000")
    assert (answer.status, answer.body["error"], answer.pulled) == (413, "request_too_large", 0)
    assert str(LIMIT) in answer.body["detail"]


async def test_a_streamed_body_is_cut_off_as_soon_as_it_passes_the_limit(app):
    answer = await call(app, endless())  # chunked: no Content-Length
    assert (answer.status, answer.body["error"]) == (413, "request_too_large")
    assert answer.pulled == LIMIT // 1024 + 1
    stored = await call(app, iter([]), path="/api/tasks", method="GET")
    assert stored.body["total"] == 0


async def test_a_body_under_the_limit_goes_through(app):
    answer = await call(app, body_of([{"n": n} for n in range(10)]))
    assert answer.status == 200 and answer.body["created"] == 10


@pytest.mark.parametrize("app", [KEY], indirect=True)
async def test_the_api_key_is_checked_before_the_body_is_read(app):
    for headers in ({}, {"x_api_key": KEY + "-wrong"}, {"authorization": "Bearer nope"}):
        small = await call(app, body_of([{"n": 1}]), **headers)
        large = await call(app, endless(), content_length="50000000", **headers)
        assert (small.status, small.body["error"], small.pulled) == (401, "unauthorized", 0), headers
        assert (large.status, large.body["error"], large.pulled) == (401, "unauthorized", 0), headers
    good = await call(app, body_of([{"n": 1}]), x_api_key=KEY)
    assert good.status == 200 and good.pulled > 0
    too_large = await call(app, endless(), content_length="50000000", authorization=f"Bearer {KEY}")
    assert (too_large.status, too_large.pulled) == (413, 0)
