"""The Feishu custom bot client: interactive cards with a coloured header, within the bot's rate limits."""

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx

from app.metrics import BOT_SENDS

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 20 * 1024
TRUNCATION_MARK = "… (truncated)"
HEADER_COLOURS = {"ok": "green", "warning": "orange", "error": "red"}
LOG_LEVELS = {"ok": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# module-level so tests can replace the wait without patching asyncio itself
_sleep = asyncio.sleep


@dataclass(frozen=True)
class Notice:
    level: Literal["ok", "warning", "error"]
    title: str
    lines: list[str]


class Notifier(Protocol):
    async def send(self, notice: Notice) -> bool:
        """Deliver the notice; True when delivered. Never raises."""

    async def close(self) -> None: ...


def sign(timestamp: str, secret: str) -> str:
    """The custom bot signature: base64(HMAC-SHA256(key=f"{timestamp}\\n{secret}", msg=b""))."""
    digest = hmac.new(f"{timestamp}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class LogNotifier:
    """Stands in for the bot when no webhook is configured (nothing is sent, so nothing counts as sent)."""

    async def send(self, notice: Notice) -> bool:
        log.log(LOG_LEVELS[notice.level], "%s: %s", notice.title, " | ".join(notice.lines))
        return True

    async def close(self) -> None:
        return None


class FeishuBot:
    def __init__(
        self,
        webhook_url: str,
        secret: str = "",
        *,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        per_second: int = 5,
        per_minute: int = 100,
    ) -> None:
        self._webhook_url = webhook_url
        self._secret = secret
        # only the host is ever logged: the path carries the webhook token
        self._host = httpx.URL(webhook_url).host
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout)
        self._clock = clock
        self._monotonic = monotonic
        self._per_second = per_second
        self._per_minute = per_minute
        self._sent_at: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def send(self, notice: Notice) -> bool:
        delivered = await self._send(notice)
        BOT_SENDS.labels("sent" if delivered else "failed").inc()
        return delivered

    async def _send(self, notice: Notice) -> bool:
        async with self._lock:
            if not await self._wait_for_budget(notice.title):
                return False
            try:
                return await self._post(notice)
            except Exception as exc:
                # a failed notice must never break the job that sent it
                log.warning("feishu bot %s: notice %r not sent: %s", self._host, notice.title, type(exc).__name__)
                return False
            finally:
                # stamped after the answer, so our window never frees before the server's does
                self._sent_at.append(self._monotonic())

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _wait_for_budget(self, title: str) -> bool:
        now = self._monotonic()
        while self._sent_at and self._sent_at[0] <= now - 60.0:
            self._sent_at.popleft()
        if len(self._sent_at) >= self._per_minute:
            log.warning("bot budget exhausted, notice dropped: %s", title)
            return False
        while True:
            last_second = [t for t in self._sent_at if t > now - 1.0]
            if len(last_second) < self._per_second:
                return True
            await _sleep(last_second[len(last_second) - self._per_second] + 1.0 - now)
            now = self._monotonic()

    async def _post(self, notice: Notice) -> bool:
        response = await self._client.post(
            self._webhook_url,
            content=self._encode(notice),
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            log.warning(
                "feishu bot %s: notice %r not sent: non-JSON answer (HTTP %d)",
                self._host,
                notice.title,
                response.status_code,
            )
            return False
        code = answer.get("code", answer.get("StatusCode"))
        if response.is_success and code == 0:
            return True
        log.warning(
            "feishu bot %s: notice %r not sent: HTTP %d, code %s, msg %s",
            self._host,
            notice.title,
            response.status_code,
            code,
            answer.get("msg", answer.get("StatusMessage")),
        )
        return False

    def _encode(self, notice: Notice) -> bytes:
        signature = self._signature()
        text = "\n".join(notice.lines)
        body = _card_body(notice, text, signature)
        if len(body) <= MAX_BODY_BYTES:
            return body
        # the longest prefix of the text that fits with the mark; JSON escaping makes its size non-linear
        fits, too_long = 0, len(text)
        while too_long - fits > 1:
            middle = (fits + too_long) // 2
            if len(_card_body(notice, _truncated(text[:middle]), signature)) <= MAX_BODY_BYTES:
                fits = middle
            else:
                too_long = middle
        kept = text[:fits]
        if "\n" in kept and text[fits] != "\n":
            kept = kept[: kept.rindex("\n")]
        return _card_body(notice, _truncated(kept), signature)

    def _signature(self) -> dict[str, str]:
        if not self._secret:
            return {}
        timestamp = str(int(self._clock()))
        return {"timestamp": timestamp, "sign": sign(timestamp, self._secret)}


def _card_body(notice: Notice, text: str, signature: dict[str, str]) -> bytes:
    body: dict[str, Any] = {
        "msg_type": "interactive",
        "card": {
            "config": {"wide_screen_mode": True},
            "header": {
                "title": {"tag": "plain_text", "content": notice.title},
                "template": HEADER_COLOURS[notice.level],
            },
            "elements": [{"tag": "div", "text": {"tag": "lark_md", "content": text}}],
        },
    }
    return json.dumps(body | signature, ensure_ascii=False, separators=(",", ":")).encode()


def _truncated(text: str) -> str:
    return f"{text}\n{TRUNCATION_MARK}" if text else TRUNCATION_MARK


def build_notifier(webhook_url: str, secret: str, timeout: float = 10.0) -> Notifier:
    if webhook_url:
        return FeishuBot(webhook_url, secret, timeout=timeout)
    return LogNotifier()
