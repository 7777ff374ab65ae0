"""The Feishu bot notifier: card shape and signature, failures, the 20 KB cap and the 5/s, 100/min budget."""

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import respx

from app import notify
from app.notify import FeishuBot, LogNotifier, Notice, build_notifier, sign

HOST = "open.feishu.cn"
TOKEN = "tok-0f3a9c-webhook"
SECRET = "sec-7b21e-bot"
WEBHOOK = f"https://{HOST}/open-apis/bot/v2/hook/{TOKEN}"
SUCCESS = {"StatusCode": 0, "StatusMessage": "success", "code": 0, "data": {}, "msg": "success"}
FIXED_EPOCH = 1_700_000_000.75
MAX_BODY = 20 * 1024


def expected_card(title: str, template: str, text: str) -> dict:
    return {
        "msg_type": "interactive",
        "card": {
            "config": {"wide_screen_mode": True},
            "header": {"title": {"tag": "plain_text", "content": title}, "template": template},
            "elements": [{"tag": "div", "text": {"tag": "lark_md", "content": text}}],
        },
    }


def independent_sign(timestamp: str, secret: str) -> str:
    key = (timestamp + "\n" + secret).encode("utf-8")
    return base64.b64encode(hmac.new(key, digestmod=hashlib.sha256).digest()).decode("ascii")


def sent_bodies(route: respx.Route) -> list[dict]:
    return [json.loads(call.request.content) for call in route.calls]


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= logging.WARNING]


class FakeTime:
    """A monotonic clock that only moves when the bot sleeps or the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(notify, "_sleep", fake.sleep)
    return fake


@pytest.fixture
async def make_bot() -> AsyncIterator[Callable[..., FeishuBot]]:
    bots: list[FeishuBot] = []

    def make(webhook_url: str = WEBHOOK, secret: str = "", **options) -> FeishuBot:
        bot = FeishuBot(webhook_url, secret, **options)
        bots.append(bot)
        return bot

    yield make
    for bot in bots:
        await bot.close()


# ---- the card and its signature --------------------------------------------------------------------


@pytest.mark.parametrize(("level", "template"), [("ok", "green"), ("warning", "orange"), ("error", "red")])
async def test_card_is_interactive_with_header_colour_per_level(
    respx_mock: respx.MockRouter, make_bot, level: str, template: str
) -> None:
    route = respx_mock.post(WEBHOOK).respond(200, json=SUCCESS)
    bot = make_bot()

    delivered = await bot.send(Notice(level, "Pool replenished", ["**12** tasks queued", "pool: 340 left"]))

    assert delivered is True
    assert sent_bodies(route) == [expected_card("Pool replenished", template, "**12** tasks queued\npool: 340 left")]
    assert route.calls.last.request.headers["content-type"].startswith("application/json")


async def test_signed_card_carries_timestamp_seconds_and_hmac_sign(respx_mock: respx.MockRouter, make_bot) -> None:
    route = respx_mock.post(WEBHOOK).respond(200, json=SUCCESS)
    bot = make_bot(secret=SECRET, clock=lambda: FIXED_EPOCH)

    assert await bot.send(Notice("error", "Store down", ["bitable timed out"])) is True

    body = sent_bodies(route)[0]
    assert body["timestamp"] == "1700000000"
    assert body["sign"] == independent_sign("1700000000", SECRET)
    assert sign("1700000000", SECRET) == body["sign"]
    assert {key: value for key, value in body.items() if key not in ("timestamp", "sign")} == expected_card(
        "Store down", "red", "bitable timed out"
    )


async def test_unsigned_card_has_no_timestamp_or_sign(respx_mock: respx.MockRouter, make_bot) -> None:
    route = respx_mock.post(WEBHOOK).respond(200, json=SUCCESS)
    bot = make_bot(clock=lambda: FIXED_EPOCH)

    assert await bot.send(Notice("ok", "t", ["x"])) is True

    assert "timestamp" not in sent_bodies(route)[0]
    assert "sign" not in sent_bodies(route)[0]


async def test_legacy_status_code_answer_counts_as_delivered(respx_mock: respx.MockRouter, make_bot) -> None:
    respx_mock.post(WEBHOOK).respond(200, json={"StatusCode": 0, "StatusMessage": "success"})

    assert await make_bot().send(Notice("ok", "t", ["x"])) is True


# ---- failures: False, one warning, nothing secret ------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        (httpx.Response(200, json={"code": 19021, "data": {}, "msg": "sign match fail"}), "19021"),
        (httpx.Response(200, json={"code": 11232, "data": {}, "msg": "frequency limited"}), "11232"),
        (httpx.Response(200, json={"code": 9499, "data": {}, "msg": "Bad Request"}), "9499"),
        (httpx.Response(500, text="Internal Server Error"), "HTTP 500"),
        (httpx.Response(200, html="<html><body>502 Bad Gateway</body></html>"), "non-JSON"),
        (httpx.ConnectTimeout("timed out"), "ConnectTimeout"),
        (httpx.ConnectError(f"cannot reach {WEBHOOK}"), "ConnectError"),
    ],
    ids=["sign", "frequency", "bad-request", "http-500", "html-page", "timeout", "connection"],
)
async def test_failure_returns_false_and_logs_one_warning_without_secrets(
    respx_mock: respx.MockRouter,
    make_bot,
    caplog: pytest.LogCaptureFixture,
    answer: httpx.Response | Exception,
    named: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="app.notify")
    route = respx_mock.post(WEBHOOK)
    if isinstance(answer, Exception):
        route.side_effect = answer
    else:
        route.return_value = answer
    bot = make_bot(secret=SECRET)

    delivered = await bot.send(Notice("warning", "Pool low", ["pool: 3 left"]))

    assert delivered is False
    assert route.call_count == 1
    [warning] = warnings_logged(caplog)
    message = warning.getMessage()
    assert named in message
    assert HOST in message
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert SECRET not in record.getMessage()


async def test_send_after_close_returns_false(respx_mock: respx.MockRouter, caplog: pytest.LogCaptureFixture) -> None:
    route = respx_mock.post(WEBHOOK).respond(200, json=SUCCESS)
    bot = FeishuBot(WEBHOOK)
    await bot.close()

    assert await bot.send(Notice("ok", "t", ["x"])) is False
    assert route.call_count == 0
    assert len(warnings_logged(caplog)) == 1


async def test_close_leaves_a_given_client_open(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(WEBHOOK).respond(200, json=SUCCESS)
    async with httpx.AsyncClient() as client:
        bot = FeishuBot(WEBHOOK, client=client)
        await bot.close()

        assert client.is_closed is False
        assert await bot.send(Notice("ok", "t", ["x"])) is True


# ---- the 20 KB body cap ------------------------------------------------------------------------------


async def test_oversized_lines_are_cut_at_a_line_to_fit(respx_mock: respx.MockRouter, make_bot) -> None:
    route = respx_mock.post(WEBHOOK).respond(200, json=SUCCESS)
    lines = [f"task {n:04d} " + "x" * 90 for n in range(400)]
    bot = make_bot(secret=SECRET)

    assert await bot.send(Notice("error", "Replenish failed", lines)) is True

    request_body = route.calls.last.request.content
    assert MAX_BODY - 200 < len(request_body) <= MAX_BODY
    body = json.loads(request_body)
    assert body["card"]["header"]["title"]["content"] == "Replenish failed"
    kept = body["card"]["elements"][0]["text"]["content"].split("\n")
    assert kept[-1] == "… (truncated)"
    assert kept[:-1] == lines[: len(kept) - 1]
    assert body["sign"] == independent_sign(body["timestamp"], SECRET)


async def test_oversized_single_multibyte_line_is_cut_by_bytes(respx_mock: respx.MockRouter, make_bot) -> None:
    route = respx_mock.post(WEBHOOK).respond(200, json=SUCCESS)
    bot = make_bot()

    assert await bot.send(Notice("warning", "宽字符", ["任务" * 5000])) is True

    request_body = route.calls.last.request.content
    assert MAX_BODY - 10 < len(request_body) <= MAX_BODY
    content = json.loads(request_body)["card"]["elements"][0]["text"]["content"]
    assert content.endswith("\n… (truncated)")
    assert ("任务" * 5000).startswith(content.removesuffix("\n… (truncated)"))


# ---- the 5/s and 100/min budget ------------------------------------------------------------------


async def test_sixth_send_in_a_second_waits_for_the_window(
    respx_mock: respx.MockRouter, make_bot, fake_time: FakeTime
) -> None:
    sent_at: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent_at.append(fake_time.now)
        return httpx.Response(200, json=SUCCESS)

    respx_mock.post(WEBHOOK).mock(side_effect=answer)
    bot = make_bot(monotonic=fake_time.monotonic)

    for n in range(5):
        assert await bot.send(Notice("ok", f"n{n}", ["x"])) is True
    assert fake_time.sleeps == []
    assert await bot.send(Notice("ok", "n5", ["x"])) is True

    assert fake_time.sleeps == [pytest.approx(1.0)]
    assert sent_at == [1000.0] * 5 + [pytest.approx(1001.0)]


async def test_concurrent_sends_share_one_window(respx_mock: respx.MockRouter, make_bot, fake_time: FakeTime) -> None:
    sent_at: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent_at.append(fake_time.now)
        return httpx.Response(200, json=SUCCESS)

    respx_mock.post(WEBHOOK).mock(side_effect=answer)
    bot = make_bot(monotonic=fake_time.monotonic)

    results = await asyncio.gather(*(bot.send(Notice("ok", f"n{n}", ["x"])) for n in range(11)))

    assert results == [True] * 11
    assert len(fake_time.sleeps) == 2
    assert all(seconds > 0 for seconds in fake_time.sleeps)
    assert sent_at == [1000.0] * 5 + [pytest.approx(1001.0)] * 5 + [pytest.approx(1002.0)]


async def test_hundred_and_first_send_in_a_minute_is_dropped(
    respx_mock: respx.MockRouter, make_bot, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    route = respx_mock.post(WEBHOOK).respond(200, json=SUCCESS)
    bot = make_bot(monotonic=fake_time.monotonic)

    for n in range(100):
        assert await bot.send(Notice("ok", f"n{n}", ["x"])) is True
        fake_time.now += 0.25
    dropped = await bot.send(Notice("warning", "Pool low", ["x"]))

    assert dropped is False
    assert route.call_count == 100
    assert fake_time.sleeps == []
    [warning] = warnings_logged(caplog)
    assert warning.getMessage() == "bot budget exhausted, notice dropped: Pool low"

    fake_time.now = 1000.0 + 60.0
    assert await bot.send(Notice("ok", "a minute later", ["x"])) is True
    assert route.call_count == 101


# ---- against the Feishu emulator over HTTP ----------------------------------------------------------


def hook_url(feishu, token: str) -> str:
    return f"{feishu.url}/open-apis/bot/v2/hook/{token}"


async def test_emulator_accepts_and_records_a_signed_card(feishu, make_bot) -> None:
    feishu.add_bot("hook-signed", secret=SECRET)
    now = float(int(time.time()))
    bot = make_bot(hook_url(feishu, "hook-signed"), SECRET, clock=lambda: now)

    assert await bot.send(Notice("warning", "Pool low", ["pool: **3** left", "threshold: 50"])) is True

    timestamp = str(int(now))
    assert feishu.bot_messages("hook-signed") == [
        expected_card("Pool low", "orange", "pool: **3** left\nthreshold: 50")
        | {"timestamp": timestamp, "sign": independent_sign(timestamp, SECRET)}
    ]


async def test_emulator_rejects_a_wrong_secret(feishu, make_bot, caplog: pytest.LogCaptureFixture) -> None:
    feishu.add_bot("hook-signed", secret=SECRET)
    bot = make_bot(hook_url(feishu, "hook-signed"), "not-the-secret")

    assert await bot.send(Notice("error", "Store down", ["x"])) is False

    assert feishu.bot_messages("hook-signed") == []
    [warning] = warnings_logged(caplog)
    assert "19021" in warning.getMessage()
    assert "not-the-secret" not in warning.getMessage()
    assert "hook-signed" not in warning.getMessage()


async def test_emulator_receives_seven_quick_sends_without_frequency_limit(feishu, make_bot) -> None:
    feishu.add_bot("hook-busy")
    bot = make_bot(hook_url(feishu, "hook-busy"))

    results = await asyncio.gather(*(bot.send(Notice("ok", f"n{n}", [f"line {n}"])) for n in range(7)))

    assert results == [True] * 7
    titles = [message["card"]["header"]["title"]["content"] for message in feishu.bot_messages("hook-busy")]
    assert sorted(titles) == [f"n{n}" for n in range(7)]
    assert feishu.count("bot", 11232) == 0


async def test_emulator_accepts_a_truncated_oversized_card(feishu, make_bot) -> None:
    feishu.add_bot("hook-big", secret=SECRET)
    bot = make_bot(hook_url(feishu, "hook-big"), SECRET)

    assert await bot.send(Notice("error", "Many failures", [f"record rec{n:05d} failed" for n in range(2000)])) is True

    [message] = feishu.bot_messages("hook-big")
    assert message["card"]["elements"][0]["text"]["content"].endswith("\n… (truncated)")


# ---- the log stand-in and the factory ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "logged_at"), [("ok", logging.INFO), ("warning", logging.WARNING), ("error", logging.ERROR)]
)
async def test_log_notifier_logs_at_the_notice_level(
    caplog: pytest.LogCaptureFixture, level: str, logged_at: int
) -> None:
    caplog.set_level(logging.INFO, logger="app.notify")
    notifier = LogNotifier()

    assert await notifier.send(Notice(level, "Pool replenished", ["12 queued", "340 left"])) is True
    await notifier.close()

    [record] = caplog.records
    assert record.levelno == logged_at
    assert "Pool replenished" in record.getMessage()
    assert "12 queued" in record.getMessage()
    assert "340 left" in record.getMessage()


async def test_build_notifier_picks_the_bot_only_with_a_webhook() -> None:
    bot = build_notifier(WEBHOOK, SECRET, timeout=3.0)
    try:
        assert isinstance(bot, FeishuBot)
    finally:
        await bot.close()
    assert isinstance(build_notifier("", SECRET), LogNotifier)
