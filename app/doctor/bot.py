"""The Feishu custom bot: its address, its signature, and (only when asked) a test card.

The signature is checked without posting anything: the probe is a signed request with no message in it. That
rests on an assumption the bot's docs leave open: **Feishu checks the signature before it reads the message**, so
a good signature on an empty body answers 9499 (bad request) while a wrong one answers 19021 (sign match fail).
If Feishu read the body first, every probe would answer 9499 and a bad secret would go unnoticed: the live suite
(`make test-live`) sends the probe with a wrong secret and fails unless it gets 19021.
"""

import time
from urllib.parse import urlsplit

import httpx

from app.config import Settings
from app.doctor.checks import Check, fail, ok, skip, warn
from app.notify import FeishuBot, Notice, sign

HOOK_PATH = "/open-apis/bot/v2/hook/"
CARD_TITLES = "Queue replenished, Task pool running low, Task pool exhausted, Replenish failed"
_SIGNED, _BAD_BODY, _BAD_SIGN, _IP, _KEYWORD, _RATE = 0, 9499, 19021, 19022, 19024, 11232


def bot_url_check(settings: Settings) -> Check:
    url = settings.feishu_robot_webhook_url
    if not url:
        return warn(
            "bot.url",
            "FEISHU_ROBOT_WEBHOOK_URL is empty: replenish notices go to the log only",
            "add a custom bot to the group and set its webhook (README: Feishu: the app, the table and the bot)",
        )
    path = urlsplit(url).path
    if not path.startswith(HOOK_PATH) or len(path) == len(HOOK_PATH):
        return fail(
            "bot.url",
            f"{urlsplit(url).netloc}{path[:24]}… is not a custom bot webhook",
            f"use the address the bot's settings show: https://open.feishu.cn{HOOK_PATH}<token>",
        )
    return ok("bot.url", f"a custom bot webhook on {urlsplit(url).netloc}")


async def bot_signature_check(settings: Settings, client: httpx.AsyncClient) -> Check:
    """A signed request with no message: Feishu answers the signature, and posts nothing (see the module's note)."""
    secret = settings.feishu_robot_secret.get_secret_value()
    body: dict[str, str] = {}
    if secret:
        timestamp = str(int(time.time()))
        body = {"timestamp": timestamp, "sign": sign(timestamp, secret)}
    try:
        response = await client.post(settings.feishu_robot_webhook_url, json=body)
        code = response.json().get("code", response.json().get("StatusCode"))
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        return fail("bot.signature", f"the webhook did not answer as a bot: {type(exc).__name__}", _URL_FIX)
    signed = "signature accepted" if secret else "the bot asks for no signature"
    if code == _BAD_BODY:
        return ok("bot.signature", f"{signed} (probe refused as an empty message, as intended; nothing was posted)")
    if code == _KEYWORD:
        return warn("bot.signature", f"{signed}; the bot has a keyword filter", f"use keywords from: {CARD_TITLES}")
    if code == _BAD_SIGN and secret:
        fix = "copy the secret from the bot's security settings into FEISHU_ROBOT_SECRET (and check the clock)"
        return fail("bot.signature", "the bot refused the signature (19021)", fix)
    if code == _BAD_SIGN:
        return fail("bot.signature", "the bot requires a signature", "set FEISHU_ROBOT_SECRET to the bot's secret")
    if code == _IP:
        return fail("bot.signature", "the bot refused this host's IP (19022)", "add it to the bot's IP allowlist")
    if code == _RATE:
        return warn("bot.signature", "the bot is rate limited now (11232)", "run the doctor again in a minute")
    if code == _SIGNED:
        return warn("bot.signature", "the bot took an empty message", "check that this is a Feishu custom bot")
    return fail("bot.signature", f"the webhook answered HTTP {response.status_code}, code {code}", _URL_FIX)


_URL_FIX = "check FEISHU_ROBOT_WEBHOOK_URL against the bot's settings (the bot may have been removed)"


async def bot_test_card(settings: Settings) -> Check:
    """A real card through the service's own bot client: what a replenish cycle sends, keywords included."""
    bot = FeishuBot(settings.feishu_robot_webhook_url, settings.feishu_robot_secret.get_secret_value())
    try:
        lines = ["If you can read this, replenish notices reach this group.", f"The service's cards: {CARD_TITLES}."]
        delivered = await bot.send(Notice("ok", "Task Manager doctor: test card", lines))
    finally:
        await bot.close()
    if delivered:
        return ok("bot.test_card", "delivered: look for it in the group")
    return fail("bot.test_card", "not delivered (the log line above says why)", _URL_FIX)


async def bot_checks(settings: Settings, *, probe: bool, send_test_card: bool) -> list[Check]:
    url = bot_url_check(settings)
    if not url.status == "ok":
        return [url]
    if not probe:
        return [url, skip("bot.signature", "not sent at start-up: run `python -m app doctor`")]
    async with httpx.AsyncClient(timeout=10) as client:
        checks = [url, await bot_signature_check(settings, client)]
    if send_test_card:
        checks.append(await bot_test_card(settings) if not checks[-1].failed else skip("bot.test_card", "bad bot"))
    return checks
