"""The Feishu emulator, driven through the real lark-oapi SDK (sync and async) over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import lark_oapi as lark
import pytest
import requests
from lark_oapi.api.bitable.v1 import (
    AppTableField,
    AppTableFieldProperty,
    AppTableFieldPropertyOption,
    AppTableRecord,
    BatchCreateAppTableRecordRequest,
    BatchCreateAppTableRecordRequestBody,
    BatchDeleteAppTableRecordRequest,
    BatchDeleteAppTableRecordRequestBody,
    BatchGetAppTableRecordRequest,
    BatchGetAppTableRecordRequestBody,
    BatchUpdateAppTableRecordRequest,
    BatchUpdateAppTableRecordRequestBody,
    ChildrenFilter,
    Condition,
    CreateAppTableFieldRequest,
    FilterInfo,
    ListAppTableFieldRequest,
    SearchAppTableRecordRequest,
    SearchAppTableRecordRequestBody,
    Sort,
)
from lark_oapi.core.exception import ObtainAccessTokenException

from tests.feishu.emulator import BOT_SUCCESS, FeishuEmulator, bot_sign
from tests.support.feishu import APP_TOKEN, TABLE_ID, clear_token_cache, lark_client
from tests.support.processes import stop

UTC8 = timezone(timedelta(hours=8))
ROOT = Path(__file__).resolve().parents[2]


# ---- request builders --------------------------------------------------------------------------------
def create_req(
    rows: list[dict], client_token: str | None = None, table_id: str = TABLE_ID, app_token: str = APP_TOKEN
) -> BatchCreateAppTableRecordRequest:
    b = BatchCreateAppTableRecordRequest.builder().app_token(app_token).table_id(table_id)
    if client_token:
        b = b.client_token(client_token)
    records = [AppTableRecord.builder().fields(r).build() for r in rows]
    return b.request_body(BatchCreateAppTableRecordRequestBody.builder().records(records).build()).build()


def update_req(updates: list[tuple[str, dict]]) -> BatchUpdateAppTableRecordRequest:
    records = [AppTableRecord.builder().record_id(rid).fields(f).build() for rid, f in updates]
    return (
        BatchUpdateAppTableRecordRequest.builder()
        .app_token(APP_TOKEN)
        .table_id(TABLE_ID)
        .request_body(BatchUpdateAppTableRecordRequestBody.builder().records(records).build())
        .build()
    )


def delete_req(ids: list[str]) -> BatchDeleteAppTableRecordRequest:
    return (
        BatchDeleteAppTableRecordRequest.builder()
        .app_token(APP_TOKEN)
        .table_id(TABLE_ID)
        .request_body(BatchDeleteAppTableRecordRequestBody.builder().records(ids).build())
        .build()
    )


def get_req(ids: list[str], automatic_fields: bool | None = None) -> BatchGetAppTableRecordRequest:
    body = BatchGetAppTableRecordRequestBody.builder().record_ids(ids)
    if automatic_fields is not None:
        body = body.automatic_fields(automatic_fields)
    return (
        BatchGetAppTableRecordRequest.builder()
        .app_token(APP_TOKEN)
        .table_id(TABLE_ID)
        .request_body(body.build())
        .build()
    )


def search_req(
    flt: Any = None,
    sort: list | None = None,
    field_names: list[str] | None = None,
    automatic_fields: bool | None = None,
    page_size: int | None = None,
    page_token: str | None = None,
    body: bool = True,
) -> SearchAppTableRecordRequest:
    b = SearchAppTableRecordRequest.builder().app_token(APP_TOKEN).table_id(TABLE_ID)
    if page_size is not None:
        b = b.page_size(page_size)
    if page_token is not None:
        b = b.page_token(page_token)
    if body:
        rb = SearchAppTableRecordRequestBody.builder().build()
        rb.filter, rb.sort, rb.field_names, rb.automatic_fields = flt, sort, field_names, automatic_fields
        b = b.request_body(rb)
    return b.build()


def cond(field: str, op: str, *values: Any) -> Condition:
    return Condition.builder().field_name(field).operator(op).value(list(values)).build()


def flt(conjunction: str, *conditions: Condition, children: list[ChildrenFilter] | None = None) -> FilterInfo:
    b = FilterInfo.builder().conjunction(conjunction).conditions(list(conditions))
    return (b.children(children) if children else b).build()


def child(conjunction: str, *conditions: Condition) -> ChildrenFilter:
    return ChildrenFilter.builder().conjunction(conjunction).conditions(list(conditions)).build()


def text(item: AppTableRecord, name: str = "Identifier") -> str:
    return "".join(seg["text"] for seg in item.fields[name])


def sdk_client(url: str, app_secret: str = "test-secret") -> lark.Client:
    return lark.Client.builder().app_id("cli_test").app_secret(app_secret).domain(url).timeout(5).build()


def bot_url(emu: FeishuEmulator, token: str) -> str:
    return f"{emu.url}/open-apis/bot/v2/hook/{token}"


def freeze_clock(emu: FeishuEmulator) -> list[float]:
    now = [emu.clock()]
    emu.clock = lambda: now[0]
    return now


@pytest.fixture
def client(feishu: FeishuEmulator):
    return lark_client(feishu)


@pytest.fixture
def records(client):
    return client.bitable.v1.app_table_record


# ---- auth --------------------------------------------------------------------------------------------
def test_token_endpoint_shape_and_bad_credentials(feishu):
    url = f"{feishu.url}/open-apis/auth/v3/tenant_access_token/internal"
    ok = requests.post(url, json={"app_id": "cli_test", "app_secret": "test-secret"}, timeout=5).json()
    assert ok["code"] == 0 and ok["msg"] == "ok" and ok["expire"] == 7200
    assert ok["tenant_access_token"].startswith("t-")
    bad = requests.post(url, json={"app_id": "cli_test", "app_secret": "nope"}, timeout=5).json()
    assert bad["code"] != 0 and "tenant_access_token" not in bad


def test_sdk_with_wrong_secret_cannot_obtain_token(feishu):
    wrong = sdk_client(feishu.url, app_secret="other")
    with pytest.raises(ObtainAccessTokenException):
        wrong.bitable.v1.app_table_record.search(search_req())


@pytest.mark.parametrize(
    ("header", "code"), [(None, 99991661), ("Bearer t-unknown", 99991663), ("t-no-bearer", 99991663)]
)
def test_bitable_calls_need_a_valid_bearer_token(feishu, header, code):
    headers = {"Authorization": header} if header else {}
    resp = requests.post(
        f"{feishu.url}/open-apis/bitable/v1/apps/{APP_TOKEN}/tables/{TABLE_ID}/records/search",
        json={},
        headers=headers,
        timeout=5,
    )
    assert resp.status_code == 400 and resp.json()["code"] == code


@pytest.mark.parametrize("code", [99991661, 99991663, 99991664, 99991668])
def test_token_faults_answer_their_code_and_make_the_sdk_fetch_a_new_token(feishu, records, code):
    assert records.search(search_req()).code == 0
    feishu.add_fault(str(code), endpoint="search", times=1)
    resp = records.search(search_req())
    assert (resp.code, resp.raw.status_code) == (code, 400)
    assert records.search(search_req()).code == 99991663  # the old token is gone: the SDK's cached one fails
    clear_token_cache()
    assert records.search(search_req()).code == 0
    assert feishu.count("token") == 2


def test_expire_tokens_then_refetch_after_clearing_sdk_cache(feishu, records):
    assert records.search(search_req()).code == 0
    feishu.expire_tokens()
    resp = records.search(search_req())
    assert (resp.code, resp.raw.status_code) == (99991663, 400)
    assert records.search(search_req()).code == 99991663  # the SDK keeps serving its cached token
    clear_token_cache()
    assert records.search(search_req()).code == 0
    assert feishu.count("token") == 2


async def test_token_expired_fault_async(feishu, records):
    assert (await records.asearch(search_req())).code == 0
    feishu.add_fault("token_expired", endpoint="batch_get", times=1)
    assert (await records.abatch_get(get_req(["recX"]))).code == 99991663
    assert (await records.asearch(search_req())).code == 99991663
    clear_token_cache()
    assert (await records.asearch(search_req())).code == 0
    assert (await records.abatch_get(get_req(["recX"]))).code == 0
    assert feishu.count("token") == 2


# ---- records: CRUD and shapes ------------------------------------------------------------------------
def test_create_echo_and_read_shapes(feishu, records):
    fields = {
        "Identifier": "job-1",
        "Status": "PENDING",
        "Payload": '{"a": 1}',
        "CreatedAt": 1_700_000_000_123,
        "Priority": 2.5,
        "Attempts": 0,
    }
    resp = records.batch_create(create_req([fields]))
    assert resp.code == 0 and resp.msg == "success"
    (echo,) = resp.data.records
    assert re.fullmatch(r"rec[A-Za-z0-9]{14}", echo.record_id)
    assert echo.fields == fields
    assert feishu.rows(APP_TOKEN, TABLE_ID) == {echo.record_id: fields}

    (item,) = records.search(search_req()).data.items
    assert item.record_id == echo.record_id
    assert item.fields == {
        "Identifier": [{"type": "text", "text": "job-1"}],
        "Status": "PENDING",
        "Payload": [{"type": "text", "text": '{"a": 1}'}],
        "CreatedAt": 1_700_000_000_123,
        "Priority": 2.5,
        "Attempts": 0,
    }
    assert item.created_time is None and item.last_modified_time is None

    got = records.batch_get(get_req([echo.record_id, "recMissing000000"])).data
    assert [r.fields for r in got.records] == [item.fields]
    assert got.absent_record_ids == ["recMissing000000"]


def test_empty_cells_are_left_out_of_reads(feishu, records):
    (rid,) = feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": "e", "Payload": "", "Priority": None}])
    (item,) = records.search(search_req()).data.items
    assert item.fields == {"Identifier": [{"type": "text", "text": "e"}]}
    assert feishu.rows(APP_TOKEN, TABLE_ID)[rid] == {"Identifier": "e", "Payload": "", "Priority": None}


def test_automatic_fields(feishu, records):
    before = int(time.time() * 1000)
    (rid,) = records.batch_create(create_req([{"Identifier": "a"}])).data.records
    (item,) = records.search(search_req(automatic_fields=True)).data.items
    assert before <= item.created_time == item.last_modified_time
    (got,) = records.batch_get(get_req([rid.record_id], automatic_fields=True)).data.records
    assert got.created_time == item.created_time


async def test_async_crud_round_trip(feishu, records):
    created = await records.abatch_create(
        create_req([{"Identifier": "a", "Attempts": 0}, {"Identifier": "b", "Attempts": 0}])
    )
    assert created.code == 0
    a, b = (r.record_id for r in created.data.records)
    updated = await records.abatch_update(update_req([(a, {"Status": "PROCESSING", "Attempts": 1})]))
    assert updated.code == 0
    assert [(r.record_id, r.fields) for r in updated.data.records] == [(a, {"Status": "PROCESSING", "Attempts": 1})]
    assert feishu.rows(APP_TOKEN, TABLE_ID)[a] == {"Identifier": "a", "Attempts": 1, "Status": "PROCESSING"}
    got = (await records.abatch_get(get_req([a, b]))).data.records
    assert [text(r) for r in got] == ["a", "b"]
    deleted = await records.abatch_delete(delete_req([b]))
    assert deleted.code == 0
    assert [(r.record_id, r.deleted) for r in deleted.data.records] == [(b, True)]
    items = (await records.asearch(search_req())).data.items
    assert [i.record_id for i in items] == [a]


def test_update_changes_last_modified_time(feishu, records):
    (rid,) = feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": "a"}])
    created = records.search(search_req(automatic_fields=True)).data.items[0].created_time
    assert records.batch_update(update_req([(rid, {"Payload": "p"})])).code == 0
    item = records.search(search_req(automatic_fields=True)).data.items[0]
    assert item.created_time == created <= item.last_modified_time


@pytest.mark.parametrize(
    ("endpoint", "limit"), [("batch_create", 1000), ("batch_update", 1000), ("batch_delete", 500), ("batch_get", 100)]
)
def test_batch_limits(feishu, records, endpoint, limit):
    feishu.rate_limits = False
    ids = feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": str(i)} for i in range(limit + 1)])
    over = {
        "batch_create": lambda n: create_req([{"Identifier": "x"}] * n),
        "batch_update": lambda n: update_req([(rid, {"Attempts": 1}) for rid in ids[:n]]),
        "batch_delete": lambda n: delete_req(ids[:n]),
        "batch_get": lambda n: get_req(ids[:n]),
    }[endpoint]
    call = getattr(records, endpoint)
    assert call(over(limit + 1)).code == 1254104
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == limit + 1
    assert call(over(limit)).code == 0
    assert feishu.calls[-1].n_records == limit


def test_one_unknown_id_fails_the_whole_update(feishu, records):
    (rid,) = feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": "a", "Attempts": 0}])
    resp = records.batch_update(update_req([(rid, {"Attempts": 5}), ("recNOPE0000000000", {"Attempts": 5})]))
    assert resp.code == 1254043
    assert feishu.rows(APP_TOKEN, TABLE_ID)[rid]["Attempts"] == 0
    assert records.batch_delete(delete_req([rid, "recNOPE0000000000"])).code == 1254043
    assert rid in feishu.rows(APP_TOKEN, TABLE_ID)


@pytest.mark.parametrize(("app_token", "table_id"), [(APP_TOKEN, "tblOTHER"), ("bascnOTHER", TABLE_ID)])
def test_table_not_found(feishu, records, app_token, table_id):
    assert (
        records.batch_create(create_req([{"Identifier": "a"}], app_token=app_token, table_id=table_id)).code == 1254041
    )


def test_unknown_field_on_write(feishu, records):
    resp = records.batch_create(create_req([{"Identifier": "a"}, {"Nope": "x"}]))
    assert resp.code == 1254045 and resp.msg == "FieldNameNotFound"
    assert feishu.rows(APP_TOKEN, TABLE_ID) == {}


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("Identifier", 5, 1254060),
        ("Identifier", [{"type": "text", "text": "seg"}], 1254060),
        ("Priority", "3", 1254061),
        ("Priority", True, 1254061),
        ("Status", 3, 1254062),
        ("CreatedAt", "2024-01-01", 1254064),
        ("CreatedAt", 1.5, 1254064),
    ],
)
def test_value_type_checks_fail_the_whole_batch(feishu, records, field, value, code):
    assert records.batch_create(create_req([{"Identifier": "ok"}, {field: value}])).code == code
    assert feishu.rows(APP_TOKEN, TABLE_ID) == {}
    (rid,) = feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": "ok"}])
    assert records.batch_update(update_req([(rid, {field: value})])).code == code
    with pytest.raises(ValueError, match=str(code)):
        feishu.insert_rows(APP_TOKEN, TABLE_ID, [{field: value}])


def test_new_single_select_name_adds_an_option(feishu, client, records):
    assert records.batch_create(create_req([{"Status": "ARCHIVED"}])).code == 0
    fields = client.bitable.v1.app_table_field.list(
        ListAppTableFieldRequest.builder().app_token(APP_TOKEN).table_id(TABLE_ID).page_size(100).build()
    )
    status = next(f for f in fields.data.items if f.field_name == "Status")
    assert [o.name for o in status.property.options][-2:] == ["CANCELLED", "ARCHIVED"]


def test_text_cell_size_limit(feishu, records):
    assert records.batch_create(create_req([{"Payload": "x" * 100_000}])).code == 0
    resp = records.batch_create(create_req([{"Payload": "x" * 100_001}]))
    assert resp.code == 1254130
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 1


# ---- client_token, overlap, faults -------------------------------------------------------------------
def test_repeated_client_token_answers_the_original(feishu, records):
    first = records.batch_create(create_req([{"Identifier": "a"}], client_token="8a3c7f3e-0000-4000-8000-000000000001"))
    again = records.batch_create(create_req([{"Identifier": "a"}], client_token="8a3c7f3e-0000-4000-8000-000000000001"))
    assert again.code == 0 and again.raw.content == first.raw.content
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 1


@pytest.mark.parametrize(
    ("answer", "status", "msg"),
    [
        ("1254608", 403, "Same API requests are submitted repeatedly."),
        ("1255006", 400, "Client token conflict, please generate a new client token and try again."),
    ],
)
async def test_repeated_client_token_answers_a_documented_refusal(feishu, records, answer, status, msg):
    feishu.repeat_token_answer = answer
    token = "8a3c7f3e-0000-4000-8000-000000000002"
    assert (await records.abatch_create(create_req([{"Identifier": "a"}], client_token=token))).code == 0
    again = await records.abatch_create(create_req([{"Identifier": "b"}], client_token=token))
    assert (again.code, again.raw.status_code, again.msg) == (int(answer), status, msg)
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 1


@pytest.mark.parametrize("token", ["tok-1", "8a3c7f3e-0000-1000-8000-000000000001", "8A3C7F3E00004000800000000000000"])
def test_client_token_must_be_a_uuid4(feishu, records, token):
    resp = records.batch_create(create_req([{"Identifier": "a"}], client_token=token))
    assert (resp.code, resp.raw.status_code) == (1254037, 400)
    assert feishu.rows(APP_TOKEN, TABLE_ID) == {}


@pytest.mark.parametrize("repeat", ["original", "1254608", "1255006"])
def test_a_create_that_landed_but_answered_1254002_is_stored_once_when_resent(feishu, records, repeat):
    feishu.repeat_token_answer = repeat
    feishu.add_fault("failed", endpoint="batch_create", times=1, landed=True)
    token = "8a3c7f3e-0000-4000-8000-000000000004"
    first = records.batch_create(create_req([{"Identifier": "a"}, {"Identifier": "b"}], client_token=token))
    assert (first.code, first.raw.status_code) == (1254002, 200)
    landed = feishu.rows(APP_TOKEN, TABLE_ID)
    assert sorted(f["Identifier"] for f in landed.values()) == ["a", "b"]
    again = records.batch_create(create_req([{"Identifier": "a"}, {"Identifier": "b"}], client_token=token))
    if repeat == "original":
        assert again.code == 0 and [r.record_id for r in again.data.records] == list(landed)
    else:
        assert again.code == int(repeat)
    assert feishu.rows(APP_TOKEN, TABLE_ID) == landed


@pytest.mark.parametrize("kind", ["1254002", "1255001", "1255002", "1255003", "1255004", "1255005", "html_502"])
def test_landed_faults_apply_the_write_and_plain_ones_do_not(feishu, records, kind):
    (rid,) = feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": "a", "Attempts": 0}])
    feishu.add_fault(kind, endpoint="batch_update", times=1)
    feishu.add_fault(kind, endpoint="batch_update", times=1, landed=True)
    for attempts in (1, 2):
        if kind == "html_502":
            with pytest.raises(ValueError):
                records.batch_update(update_req([(rid, {"Attempts": attempts})]))
        else:
            resp = records.batch_update(update_req([(rid, {"Attempts": attempts})]))
            assert (resp.code, resp.raw.status_code) == (int(kind), 200)
    assert feishu.rows(APP_TOKEN, TABLE_ID)[rid]["Attempts"] == 2  # the first was refused, the second landed


def test_a_fault_fires_at_least_once_or_is_refused(feishu):
    with pytest.raises(ValueError, match="at least 1"):
        feishu.add_fault("conflict", endpoint="batch_create", times=0)


@pytest.mark.parametrize("kind", ["rate_limit", "99991400", "quota", "lost_answer", "token_expired", "99991668"])
def test_faults_that_stop_a_call_cannot_be_landed(feishu, kind):
    with pytest.raises(ValueError, match="cannot follow"):
        feishu.add_fault(kind, endpoint="batch_create", landed=True)


def test_overlapping_writes_on_one_table_conflict(feishu, records):
    feishu.add_table(APP_TOKEN, "tblSECOND")
    assert records.search(search_req()).code == 0  # fetch the token before timing matters
    feishu.latency = 0.3
    barrier = threading.Barrier(3)
    codes: dict[str, int] = {}

    def write(name: str, table_id: str) -> None:
        barrier.wait()
        codes[name] = records.batch_create(create_req([{"Identifier": name}], table_id=table_id)).code

    threads = [
        threading.Thread(target=write, args=args) for args in (("a", TABLE_ID), ("b", TABLE_ID), ("other", "tblSECOND"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted([codes["a"], codes["b"]]) == [0, 1254291]
    assert codes["other"] == 0
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 1
    feishu.latency = 0.0
    assert records.batch_create(create_req([{"Identifier": "c"}])).code == 0


async def test_overlapping_async_writes_conflict(feishu, records):
    (rid,) = feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": "a"}])
    assert (await records.asearch(search_req())).code == 0
    feishu.latency = 0.3
    results = await asyncio.gather(
        records.abatch_update(update_req([(rid, {"Attempts": 1})])), records.abatch_delete(delete_req([rid]))
    )
    assert sorted(r.code for r in results) == [0, 1254291]


@pytest.mark.parametrize(
    ("kind", "code", "status"),
    [
        ("conflict", 1254291, 200),
        ("not_ready", 1254607, 400),
        ("too_many", 1254290, 200),
        ("timeout_code", 1255040, 504),
        ("failed", 1254002, 200),
        ("1255001", 1255001, 200),
        ("1255005", 1255005, 200),
        ("server_error", 1255001, 500),
        ("rate_limit", 99991400, 429),
        ("quota", 99991403, 429),
    ],
)
def test_json_faults_fire_n_times(feishu, records, kind, code, status):
    feishu.add_fault(kind, endpoint="batch_create", times=2)
    for _ in range(2):
        resp = records.batch_create(create_req([{"Identifier": "a"}]))
        assert (resp.code, resp.raw.status_code) == (code, status)
    if kind == "rate_limit":
        assert resp.raw.headers["x-ogw-ratelimit-limit"] == "50"
        assert int(resp.raw.headers["x-ogw-ratelimit-reset"]) >= 1
    assert feishu.rows(APP_TOKEN, TABLE_ID) == {}
    assert records.batch_create(create_req([{"Identifier": "a"}])).code == 0
    assert feishu.count("batch_create", code) == 2


async def test_html_502_is_not_json(feishu, records):
    feishu.add_fault("html_502", endpoint="search", times=2)
    with pytest.raises(ValueError):
        records.search(search_req())
    with pytest.raises(ValueError):
        await records.asearch(search_req())
    assert (await records.asearch(search_req())).code == 0
    assert [(c.http_status, c.code) for c in feishu.calls if c.endpoint == "search"] == [
        (502, None),
        (502, None),
        (200, 0),
    ]


def test_html_502_raw_answer(feishu):
    feishu.add_fault("html_502", endpoint="bot")
    feishu.add_bot("hook")
    resp = requests.post(bot_url(feishu, "hook"), json={"msg_type": "text", "content": {"text": "x"}}, timeout=5)
    assert resp.status_code == 502 and resp.headers["Content-Type"].startswith("text/html")
    assert b"502 Bad Gateway" in resp.content


def test_fault_without_endpoint_hits_every_bitable_endpoint_only(feishu, client, records):
    feishu.add_fault("not_ready")
    feishu.add_bot("hook")
    assert records.search(search_req()).code == 1254607  # the token fetch went through
    assert (
        client.bitable.v1.app_table_field.list(
            ListAppTableFieldRequest.builder().app_token(APP_TOKEN).table_id(TABLE_ID).build()
        ).code
        == 1254607
    )
    bot = requests.post(bot_url(feishu, "hook"), json={"msg_type": "text", "content": {"text": "x"}}, timeout=5)
    assert bot.json()["code"] == 0
    feishu.clear_faults()
    assert records.search(search_req()).code == 0


def test_fault_probability_uses_the_seeded_rng(feishu):
    def pattern() -> list[int]:
        clear_token_cache()
        with FeishuEmulator(seed=7, rate_limits=False) as emu:
            emu.add_table(APP_TOKEN, TABLE_ID)
            emu.add_fault("too_many", endpoint="search", probability=0.5)
            api = lark_client(emu).bitable.v1.app_table_record
            return [api.search(search_req()).code for _ in range(20)]

    first, second = pattern(), pattern()
    assert first == second
    assert 0 < first.count(1254290) < 20


def test_lost_answer_applies_the_write_then_drops_the_connection(feishu, records):
    feishu.add_fault("lost_answer", endpoint="batch_create", times=1)
    token = "8a3c7f3e-0000-4000-8000-000000000003"
    with pytest.raises(requests.exceptions.ConnectionError):
        records.batch_create(create_req([{"Identifier": "lost"}], client_token=token))
    assert [f["Identifier"] for f in feishu.rows(APP_TOKEN, TABLE_ID).values()] == ["lost"]
    call = feishu.calls[-1]
    assert (call.endpoint, call.http_status, call.code) == ("batch_create", None, 0)
    retry = records.batch_create(create_req([{"Identifier": "lost"}], client_token=token))
    assert retry.code == 0 and [r.record_id for r in retry.data.records] == list(feishu.rows(APP_TOKEN, TABLE_ID))


async def test_lost_answer_async(feishu, records):
    (rid,) = feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": "a", "Attempts": 0}])
    feishu.add_fault("lost_answer", endpoint="batch_update", times=1)
    with pytest.raises(httpx.TransportError):
        await records.abatch_update(update_req([(rid, {"Attempts": 1})]))
    assert feishu.rows(APP_TOKEN, TABLE_ID)[rid]["Attempts"] == 1


@pytest.mark.parametrize(
    ("kind", "code", "status"),
    [
        ("conflict", 1254291, 400),
        ("not_ready", 1254607, 500),
        ("failed", 1254002, 500),
        ("1255003", 1255003, 500),
        ("timeout_code", 1255040, 504),
        ("too_many", 1254290, 400),
    ],
)
def test_batch_get_answers_with_its_own_pages_statuses(feishu, records, kind, code, status):
    feishu.add_fault(kind, endpoint="batch_get", times=1)
    resp = records.batch_get(get_req(["recX"]))
    assert (resp.code, resp.raw.status_code) == (code, status)
    assert records.batch_get(get_req(["recX"])).code == 0


def test_an_unknown_table_answers_200_on_search_and_404_on_batch_get(feishu, records):
    search = search_req()
    search.paths["table_id"] = "tblNOPE"
    found = records.search(search)
    assert (found.code, found.raw.status_code) == (1254041, 200)
    get = get_req(["recX"])
    get.paths["table_id"] = "tblNOPE"
    got = records.batch_get(get)
    assert (got.code, got.raw.status_code) == (1254041, 404)


@pytest.mark.parametrize("read_conflicts", [False, True])
def test_reads_overlapping_a_write_conflict_only_when_read_conflicts_is_on(feishu, client, records, read_conflicts):
    assert feishu.read_conflicts is False  # the default keeps ordinary tests deterministic
    feishu.read_conflicts = read_conflicts
    feishu.rate_limits = False
    (rid,) = feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": "a"}])
    feishu.add_table(APP_TOKEN, "tblSECOND")
    other = search_req()
    other.paths["table_id"] = "tblSECOND"
    fields = ListAppTableFieldRequest.builder().app_token(APP_TOKEN).table_id(TABLE_ID).build()
    reads = {
        "search": lambda: records.search(search_req()),
        "batch_get": lambda: records.batch_get(get_req([rid])),
        "fields_list": lambda: client.bitable.v1.app_table_field.list(fields),
    }
    assert records.search(search_req()).code == 0  # fetch the token before timing matters
    feishu.latency = {"batch_update": 0.5}  # the update holds the table; reads answer at once
    writer = threading.Thread(target=lambda: records.batch_update(update_req([(rid, {"Attempts": 1})])))
    writer.start()
    answers: list[tuple[str, int, int]] = []
    while writer.is_alive():
        for name, read in reads.items():
            resp = read()
            answers.append((name, resp.code, resp.raw.status_code))
        assert records.search(other).code == 0  # another table is never held
    writer.join()
    (write,) = [c for c in feishu.calls if c.endpoint == "batch_update"]
    assert write.code == 0
    # the reads that began and ended well inside the write (the emulator's own timings)
    read_calls = [c for c in feishu.calls if c.endpoint in reads and f"/tables/{TABLE_ID}/" in c.path]
    inside = [c for c in read_calls if write.t_start + 0.05 < c.t_start and c.t_end < write.t_end - 0.05]
    assert {c.endpoint for c in inside} == set(reads)
    assert {c.code for c in inside} == ({1254291} if read_conflicts else {0})
    if read_conflicts:
        assert {(c.endpoint, c.http_status) for c in inside} == {
            ("search", 200),
            ("batch_get", 400),
            ("fields_list", 200),
        }
    assert {code for _, code, _ in answers} <= {0, 1254291}


def test_a_field_create_is_a_write(feishu, client, records):
    assert records.search(search_req()).code == 0
    feishu.latency = 0.3
    barrier = threading.Barrier(2)
    codes: dict[str, int] = {}
    body = AppTableField.builder().field_name("Tier").type(1).build()

    def create_field() -> None:
        barrier.wait()
        req = CreateAppTableFieldRequest.builder().app_token(APP_TOKEN).table_id(TABLE_ID).request_body(body).build()
        codes["field"] = client.bitable.v1.app_table_field.create(req).code

    def create_record() -> None:
        barrier.wait()
        codes["record"] = records.batch_create(create_req([{"Identifier": "a"}])).code

    threads = [threading.Thread(target=create_field), threading.Thread(target=create_record)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes.values()) == [0, 1254291]


def test_monthly_quota_answers_99991403_once_spent(feishu, records):
    feishu.add_bot("hook")
    feishu.monthly_quota = 3
    assert [records.search(search_req()).code for _ in range(3)] == [0, 0, 0]
    assert feishu.monthly_quota == 0
    spent = records.batch_create(create_req([{"Identifier": "a"}]))
    assert (spent.code, spent.raw.status_code) == (99991403, 429)
    assert feishu.rows(APP_TOKEN, TABLE_ID) == {}
    clear_token_cache()
    assert records.search(search_req()).code == 99991403  # the token fetch still works, the call does not
    assert feishu.count("token", 0) == 2
    bot = requests.post(bot_url(feishu, "hook"), json={"msg_type": "text", "content": {"text": "x"}}, timeout=5)
    assert bot.json()["code"] == 0  # a bot's webhook is not an app's API call
    feishu.monthly_quota = None
    assert records.search(search_req()).code == 0


def test_monthly_quota_does_not_count_calls_that_fail_with_a_4xx_or_5xx(feishu, records):
    feishu.monthly_quota = 2
    feishu.add_fault("not_ready", endpoint="search", times=1)  # 1254607 comes with HTTP 400
    assert records.search(search_req()).code == 1254607
    assert feishu.monthly_quota == 2
    feishu.add_fault("failed", endpoint="search", times=1)  # 1254002 comes with HTTP 200: it counts
    assert records.search(search_req()).code == 1254002
    assert feishu.monthly_quota == 1


def test_max_response_bytes_answers_1254030_for_a_page_too_large(feishu, records):
    ids = feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": str(i), "Payload": "x" * 2000} for i in range(10)])
    feishu.max_response_bytes = 5_000
    big = records.search(search_req(page_size=10))
    assert (big.code, big.raw.status_code) == (1254030, 200)
    assert records.search(search_req(page_size=2)).code == 0
    assert records.search(search_req(page_size=10, field_names=["Identifier"])).code == 0
    got = records.batch_get(get_req(ids))
    assert (got.code, got.raw.status_code) == (1254030, 400)
    assert records.batch_get(get_req(ids[:1])).code == 0


# ---- rate limits -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("endpoint", "limit"), [("search", 20), ("batch_get", 20), ("batch_create", 50)])
def test_rate_limit_sliding_window(feishu, records, endpoint, limit):
    assert records.search(search_req()).code == 0
    now = freeze_clock(feishu)
    now[0] += 1.0  # leave the warm-up search out of the window
    call = {
        "search": lambda: records.search(search_req()),
        "batch_get": lambda: records.batch_get(get_req(["recX"])),
        "batch_create": lambda: records.batch_create(create_req([{"Identifier": "r"}])),
    }[endpoint]
    assert all(call().code == 0 for _ in range(limit))
    limited = call()
    assert (limited.code, limited.raw.status_code) == (99991400, 429)
    assert limited.msg == "request trigger frequency limit"
    assert limited.raw.headers["x-ogw-ratelimit-limit"] == str(limit)
    assert limited.raw.headers["x-ogw-ratelimit-reset"] == "1"
    now[0] += 0.5
    assert call().code == 99991400
    now[0] += 0.5
    assert call().code == 0


def test_rate_limits_off(feishu, records):
    feishu.rate_limits = False
    freeze_clock(feishu)
    assert all(records.search(search_req()).code == 0 for _ in range(25))


# ---- search: pagination, filter, sort, columns -------------------------------------------------------
def test_search_without_body_answers_9499(feishu, records):
    resp = records.search(search_req(body=False))
    assert (resp.code, resp.raw.status_code) == (9499, 400)


def test_pagination_over_1203_rows(feishu, records):
    ids = feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": f"r{i}", "Priority": i} for i in range(1203)])
    seen, token, pages = [], None, []
    while True:
        data = records.search(search_req(page_size=500, page_token=token)).data
        assert data.total == 1203
        pages.append(len(data.items))
        seen += [i.record_id for i in data.items]
        if not data.has_more:
            assert data.page_token is None
            break
        token = data.page_token
        assert token
    assert pages == [500, 500, 203]
    assert seen == ids
    assert feishu.calls[-1].n_records == 203


def test_page_size_default_and_bounds(feishu, records):
    feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": str(i)} for i in range(25)])
    data = records.search(search_req()).data
    assert (len(data.items), data.has_more, data.total) == (20, True, 25)
    assert records.search(search_req(page_size=500)).code == 0
    assert records.search(search_req(page_size=501)).code == 99992402
    zero = records.search(search_req(page_size=0))
    assert (zero.code, zero.raw.status_code) == (1254011, 400)
    bad = records.search(search_req(page_token="garbage!"))
    assert (bad.code, bad.raw.status_code) == (1254002, 200)


FILTER_ROWS = [
    {"Identifier": "alpha", "Status": "PENDING", "Priority": 9, "Payload": "x-red"},
    {"Identifier": "beta", "Status": "SUCCESS", "Priority": 10, "Payload": "blue"},
    {"Identifier": "gamma", "Status": "FAILED", "Priority": 2.5, "Payload": ""},
    {"Identifier": "delta", "Status": "PENDING", "Payload": "red-green"},
]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (cond("Identifier", "is", "alpha"), {"alpha"}),
        (cond("Identifier", "isNot", "alpha"), {"beta", "gamma", "delta"}),
        (cond("Payload", "contains", "red"), {"alpha", "delta"}),
        (cond("Payload", "doesNotContain", "red"), {"beta", "gamma"}),
        (cond("Payload", "isEmpty"), {"gamma"}),
        (cond("Payload", "isNotEmpty"), {"alpha", "beta", "delta"}),
        (cond("Priority", "is", "10"), {"beta"}),
        (cond("Priority", "isNot", "10"), {"alpha", "gamma", "delta"}),
        (cond("Priority", "isGreater", "9"), {"beta"}),
        (cond("Priority", "isGreaterEqual", "9"), {"alpha", "beta"}),
        (cond("Priority", "isLess", "9"), {"gamma"}),
        (cond("Priority", "isLessEqual", "9.0"), {"alpha", "gamma"}),
        (cond("Priority", "isEmpty"), {"delta"}),
        (cond("Status", "is", "PENDING"), {"alpha", "delta"}),
        (cond("Status", "isNot", "PENDING"), {"beta", "gamma"}),
        (cond("Status", "contains", "SUCCESS", "FAILED"), {"beta", "gamma"}),
        (cond("Status", "contains", "SUCC"), set()),  # options, not substrings
        (cond("Status", "doesNotContain", "PENDING", "FAILED"), {"beta"}),
        (cond("Status", "isEmpty"), set()),
    ],
)
def test_filter_operators(feishu, records, condition, expected):
    feishu.insert_rows(APP_TOKEN, TABLE_ID, FILTER_ROWS)
    data = records.search(search_req(flt("and", condition))).data
    assert {text(i) for i in data.items} == expected
    assert data.total == len(expected)


@pytest.mark.parametrize(
    ("filter_info", "expected"),
    [
        (flt("or", cond("Status", "is", "SUCCESS"), cond("Status", "is", "FAILED")), {"beta", "gamma"}),
        (flt("and", cond("Status", "is", "PENDING"), cond("Priority", "isGreater", "5")), {"alpha"}),
        (
            flt(
                "and",
                cond("Payload", "isNotEmpty"),
                children=[child("or", cond("Status", "is", "SUCCESS"), cond("Status", "is", "PENDING"))],
            ),
            {"alpha", "beta", "delta"},
        ),
        (
            flt(
                "or",
                cond("Identifier", "is", "gamma"),
                children=[child("and", cond("Status", "is", "PENDING"), cond("Payload", "contains", "green"))],
            ),
            {"gamma", "delta"},
        ),
        (
            flt(
                "and",
                children=[
                    child("or", cond("Status", "is", "PENDING"), cond("Status", "is", "SUCCESS")),
                    child("or", cond("Priority", "isGreater", "9"), cond("Payload", "contains", "green")),
                ],
            ),
            {"beta", "delta"},
        ),
    ],
)
def test_filter_conjunctions_and_children(feishu, records, filter_info, expected):
    feishu.insert_rows(APP_TOKEN, TABLE_ID, FILTER_ROWS)
    assert {text(i) for i in records.search(search_req(filter_info)).data.items} == expected


def test_a_repeated_search_follows_every_change_to_the_table(feishu, records):
    (alpha, beta, _, delta) = feishu.insert_rows(APP_TOKEN, TABLE_ID, FILTER_ROWS)

    def pending() -> list[str]:
        found, token = [], None
        while True:
            data = records.search(
                search_req(flt("and", cond("Status", "is", "PENDING")), page_size=2, page_token=token)
            )
            found += [text(i) for i in data.data.items or []]
            if not data.data.has_more:
                return found
            token = data.data.page_token

    assert pending() == ["alpha", "delta"]
    assert records.batch_update(update_req([(beta, {"Status": "PENDING"})])).code == 0
    assert pending() == ["alpha", "beta", "delta"]
    assert records.batch_delete(delete_req([alpha])).code == 0
    assert pending() == ["beta", "delta"]
    assert records.batch_create(create_req([{"Identifier": "eps", "Status": "PENDING"}])).code == 0
    assert pending() == ["beta", "delta", "eps"]
    feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": "zeta", "Status": "PENDING"}])
    assert pending() == ["beta", "delta", "eps", "zeta"]
    assert records.batch_update(update_req([(delta, {"Status": "SUCCESS"})])).code == 0
    assert pending() == ["beta", "eps", "zeta"]


def test_a_stopped_emulator_answers_no_kept_alive_connection(feishu):
    with httpx.Client(base_url=feishu.url, timeout=5) as http:
        assert http.post("/open-apis/auth/v3/tenant_access_token/internal", json={}).status_code == 200
        feishu.stop()
        with pytest.raises(httpx.TransportError):
            http.post("/open-apis/auth/v3/tenant_access_token/internal", json={})


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC8).timestamp() * 1000)


NOON_MARCH_10 = str(ms(2024, 3, 10, 12, 0))


@pytest.mark.parametrize(
    ("op", "expected"),
    [("is", {"d1", "d2"}), ("isGreater", {"d3"}), ("isLess", {"d4"}), ("isEmpty", {"d5"}), ("isNotEmpty", None)],
)
def test_exact_date_compares_by_day(feishu, records, op, expected):
    feishu.insert_rows(
        APP_TOKEN,
        TABLE_ID,
        [
            {"Identifier": "d1", "CreatedAt": ms(2024, 3, 10, 0, 30)},
            {"Identifier": "d2", "CreatedAt": ms(2024, 3, 10, 23, 30)},
            {"Identifier": "d3", "CreatedAt": ms(2024, 3, 11, 0, 10)},
            {"Identifier": "d4", "CreatedAt": ms(2024, 3, 9, 23, 59)},
            {"Identifier": "d5"},
        ],
    )
    values = () if op in ("isEmpty", "isNotEmpty") else ("ExactDate", NOON_MARCH_10)
    found = records.search(search_req(flt("and", cond("CreatedAt", op, *values)))).data.items
    assert {text(i) for i in found} == (expected or {"d1", "d2", "d3", "d4"})


@pytest.mark.parametrize("field", ["CreatedAt", "Made"])
@pytest.mark.parametrize("op", ["isNot", "isGreaterEqual", "isLessEqual", "contains", "doesNotContain"])
def test_date_filters_refuse_the_operators_the_docs_do_not_support(feishu, records, field, op):
    feishu.add_table(APP_TOKEN, "tblMADE", [("Name", 1), ("CreatedAt", 5), ("Made", 1001)])
    req = search_req(flt("and", cond(field, op, "ExactDate", NOON_MARCH_10)))
    req.paths["table_id"] = "tblMADE"
    resp = records.search(req)
    assert (resp.code, resp.raw.status_code) == (1254018, 200)


def test_relative_date_spans(feishu, records):
    today = datetime.now(UTC8).date()
    last_month = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    days = {
        "today": today,
        "minus7": today - timedelta(days=7),
        "minus8": today - timedelta(days=8),
        "plus8": today + timedelta(days=8),
        "month_start": today.replace(day=1),
        "last_month_start": last_month,
        "old": today - timedelta(days=70),
    }
    noon = {name: int(datetime(d.year, d.month, d.day, 12, tzinfo=UTC8).timestamp() * 1000) for name, d in days.items()}
    feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": n, "ClaimedAt": ms_} for n, ms_ in noon.items()])

    def found(word: str) -> set[str]:
        return {text(i) for i in records.search(search_req(flt("and", cond("ClaimedAt", "is", word)))).data.items}

    assert "today" in found("TheLastWeek") and not found("TheLastWeek") & {"minus7", "plus8"}
    assert "today" in found("TheNextWeek") and not found("TheNextWeek") & {"minus7", "plus8"}
    assert {"today", "minus7", "minus8"} <= found("TheLastMonth") and not found("TheLastMonth") & {"plus8", "old"}
    assert {"today", "plus8"} <= found("TheNextMonth") and not found("TheNextMonth") & {"minus7", "old"}
    assert "today" in found("CurrentWeek") and not found("CurrentWeek") & {"minus7", "minus8", "plus8", "old"}
    assert "minus7" in found("LastWeek") and not found("LastWeek") & {"today", "plus8", "old"}
    assert {"today", "month_start"} <= found("CurrentMonth") and "last_month_start" not in found("CurrentMonth")
    assert "last_month_start" in found("LastMonth") and not found("LastMonth") & {"today", "month_start", "old"}


def test_relative_dates(feishu, records):
    now = int(time.time() * 1000)
    day = 86_400_000
    feishu.insert_rows(
        APP_TOKEN,
        TABLE_ID,
        [
            {"Identifier": "today", "ClaimedAt": now},
            {"Identifier": "yesterday", "ClaimedAt": now - day},
            {"Identifier": "tomorrow", "ClaimedAt": now + day},
        ],
    )
    for word in ("Today", "Yesterday", "Tomorrow"):
        found = records.search(search_req(flt("and", cond("ClaimedAt", "is", word)))).data.items
        assert [text(i) for i in found] == [word.lower()]


def test_filter_value_must_be_list_of_strings(feishu, records):
    feishu.insert_rows(APP_TOKEN, TABLE_ID, FILTER_ROWS)
    assert records.search(search_req(flt("and", cond("Priority", "is", 10)))).code == 1254018


@pytest.mark.parametrize(
    "bad",
    [
        flt("and", cond("Status", "in", "PENDING", "SUCCESS")),
        flt("and", cond("Nope", "is", "x")),
        flt("and", cond("Status", "is", "PENDING", "SUCCESS")),
        flt("and", cond("Status", "isNot")),
        flt("and", cond("Priority", "isGreater", "nine")),
        flt("and", cond("Identifier", "isGreater", "a")),
        flt("and", cond("Priority", "contains", "1")),
        flt("and", cond("Status", "like", "PEND")),
        flt("and", cond("Payload", "contains", "blue", "green")),
        flt("and", cond("Identifier", "is")),
        flt("and", cond("Priority", "is", "1", "2")),
        flt("and", cond("Payload", "isEmpty", "x")),
        flt("and", cond("Status", "contains")),
        {"conjunction": "and", "conditions": [{"field_name": "Payload", "operator": "isEmpty"}]},
        {"conjunction": "and", "conditions": [{"field_name": "Payload", "operator": "isEmpty", "value": None}]},
        {"conditions": [{"field_name": "Identifier", "operator": "is", "value": ["a"]}]},
        flt("xor", cond("Identifier", "is", "a")),
        flt("and", cond("CreatedAt", "is", "2024-03-10")),
        flt("and", cond("CreatedAt", "is", "ExactDate")),
        flt("and", cond("CreatedAt", "is", "ExactDate", "soon")),
        flt("and", cond("CreatedAt", "isGreater", "CurrentWeek")),
        flt("and", cond("CreatedAt", "isLess", "TheLastMonth")),
        flt("and", cond("CreatedAt", "is", "Today", "1")),
        flt("and", cond("CreatedAt", "is", "ExactDate", "1", "2")),
        {
            "conjunction": "and",
            "conditions": [],
            "children": [{"conjunction": "or", "conditions": [], "children": [{"conjunction": "and"}]}],
        },
        {"conjunction": "and", "conditions": "Status is PENDING"},
    ],
)
def test_invalid_filters_answer_1254018(feishu, records, bad):
    resp = records.search(search_req(bad))
    assert (resp.code, resp.raw.status_code) == (1254018, 200)


@pytest.mark.parametrize(
    "bad",
    [
        flt("and", cond("Status", "contains", *[str(i) for i in range(11)])),
        flt("and", *[cond("Identifier", "is", str(i)) for i in range(51)]),
        flt("and", children=[child("or", *[cond("Identifier", "is", str(i)) for i in range(51)])]),
    ],
)
def test_filter_validation_rules_answer_99992402(feishu, records, bad):
    resp = records.search(search_req(bad))
    assert (resp.code, resp.raw.status_code) == (99992402, 400)


def test_filter_limits_at_the_edge(feishu, records):
    assert records.search(search_req(flt("and", cond("Status", "contains", *"abcdefghij")))).code == 0
    many = flt("or", *[cond("Identifier", "is", str(i)) for i in range(50)])
    assert records.search(search_req(many)).code == 1254107  # 50 conditions pass the count, not the length
    two_groups = flt(
        "and",
        children=[child("or", *[cond("Priority", "is", str(i)) for i in range(10)]) for _ in range(2)],
    )
    assert records.search(search_req(two_groups)).code == 0


def test_filter_json_over_2000_characters(feishu, records):
    shape = {"conjunction": "and", "conditions": [{"field_name": "Identifier", "operator": "is", "value": [""]}]}
    room = 2000 - len(json.dumps(shape))
    assert records.search(search_req(flt("and", cond("Identifier", "is", "x" * room)))).code == 0
    assert records.search(search_req(flt("and", cond("Identifier", "is", "x" * (room + 1))))).code == 1254107


def test_sort_and_field_names(feishu, records):
    feishu.insert_rows(
        APP_TOKEN,
        TABLE_ID,
        [
            {"Identifier": "p3", "Status": "SUCCESS", "Priority": 3},
            {"Identifier": "p1", "Status": "PENDING", "Priority": 1},
            {"Identifier": "none", "Status": "PENDING"},
            {"Identifier": "p2", "Status": "SUCCESS", "Priority": 2},
            {"Identifier": "p10", "Status": "PENDING", "Priority": 10},
        ],
    )

    def order(*keys: tuple[str, bool]) -> list[str]:
        sort = [Sort.builder().field_name(name).desc(desc).build() for name, desc in keys]
        return [text(i) for i in records.search(search_req(sort=sort)).data.items]

    assert order(("Priority", False)) == ["p1", "p2", "p3", "p10", "none"]
    assert order(("Priority", True)) == ["p10", "p3", "p2", "p1", "none"]
    assert order(("Status", False), ("Priority", True)) == ["p10", "p1", "none", "p3", "p2"]
    assert order(("Identifier", True))[:2] == ["p3", "p2"]
    items = records.search(search_req(field_names=["Priority"])).data.items
    assert [i.fields for i in items] == [{"Priority": 3}, {"Priority": 1}, {}, {"Priority": 2}, {"Priority": 10}]
    resp = records.search(search_req(field_names=["Identifier", "Nope"]))
    assert (resp.code, resp.raw.status_code, resp.msg) == (1254024, 200, "InvalidFieldNames")
    resp = records.search(search_req(sort=[Sort.builder().field_name("Nope").build()]))
    assert (resp.code, resp.msg) == (1254016, "InvalidSort: 'Nope'")


def test_sort_and_field_names_limits(feishu, records):
    long_sort = [Sort.builder().field_name("Identifier").desc(False).build() for _ in range(30)]
    assert records.search(search_req(sort=long_sort[:20])).code == 0
    assert records.search(search_req(sort=long_sort)).code == 1254108  # 30 keys are over 1,000 characters
    too_many = records.search(search_req(sort=[{"field_name": "Identifier"}] * 101))
    assert (too_many.code, too_many.raw.status_code) == (99992402, 400)  # counted before measured
    assert records.search(search_req(field_names=["Identifier"] * 200)).code == 0
    resp = records.search(search_req(field_names=["Identifier"] * 201))
    assert (resp.code, resp.raw.status_code) == (99992402, 400)


# ---- fields ------------------------------------------------------------------------------------------
async def test_fields_list_pages_and_create(feishu, client, records):
    api = client.bitable.v1.app_table_field
    first = await api.alist(
        ListAppTableFieldRequest.builder().app_token(APP_TOKEN).table_id(TABLE_ID).page_size(5).build()
    )
    assert (first.code, first.data.total, first.data.has_more) == (0, 10, True)
    assert [f.field_name for f in first.data.items] == ["Identifier", "Status", "Payload", "CreatedAt", "Priority"]
    assert first.data.items[0].is_primary and first.data.items[1].type == 3
    assert [o.name for o in first.data.items[1].property.options][:2] == ["PENDING", "PROCESSING"]
    assert all(re.fullmatch(r"fld[A-Za-z0-9]{10}", f.field_id) for f in first.data.items)
    rest = await api.alist(
        ListAppTableFieldRequest.builder()
        .app_token(APP_TOKEN)
        .table_id(TABLE_ID)
        .page_size(5)
        .page_token(first.data.page_token)
        .build()
    )
    assert [f.field_name for f in rest.data.items] == ["Attempts", "ClaimedAt", "Result", "Error", "FinishedAt"]
    assert rest.data.has_more is False and rest.data.page_token is None

    prop = AppTableFieldProperty.builder().options([AppTableFieldPropertyOption.builder().name("low").build()]).build()
    body = AppTableField.builder().field_name("Tier").type(3).property(prop).build()
    created = api.create(
        CreateAppTableFieldRequest.builder().app_token(APP_TOKEN).table_id(TABLE_ID).request_body(body).build()
    )
    assert created.code == 0 and created.data.field.field_name == "Tier"
    assert [o.name for o in created.data.field.property.options] == ["low"]
    assert records.batch_create(create_req([{"Tier": "high"}])).code == 0
    dup = api.create(
        CreateAppTableFieldRequest.builder().app_token(APP_TOKEN).table_id(TABLE_ID).request_body(body).build()
    )
    assert dup.code != 0
    assert feishu.count("fields_create", 0) == 1 and feishu.count("fields_list") == 2


def create_field(client, name: str, type_: int, prop: AppTableFieldProperty | None = None):
    body = AppTableField.builder().field_name(name).type(type_)
    if prop is not None:
        body = body.property(prop)
    req = CreateAppTableFieldRequest.builder().app_token(APP_TOKEN).table_id(TABLE_ID).request_body(body.build())
    return client.bitable.v1.app_table_field.create(req.build())


def test_date_columns_keep_their_date_formatter(feishu, client, records):
    with_time = AppTableFieldProperty.builder().date_formatter("yyyy/MM/dd HH:mm").auto_fill(False).build()
    created = create_field(client, "DoneAt", 5, with_time)
    assert created.code == 0
    assert (created.data.field.property.date_formatter, created.data.field.property.auto_fill) == (
        "yyyy/MM/dd HH:mm",
        False,
    )
    assert create_field(client, "Plain", 5).data.field.property.date_formatter == "yyyy/MM/dd"  # the default
    listed = client.bitable.v1.app_table_field.list(
        ListAppTableFieldRequest.builder().app_token(APP_TOKEN).table_id(TABLE_ID).page_size(100).build()
    )
    formats = {f.field_name: f.property.date_formatter for f in listed.data.items if f.type == 5}
    assert formats == {
        "CreatedAt": "yyyy/MM/dd HH:mm",
        "ClaimedAt": "yyyy/MM/dd HH:mm",
        "FinishedAt": "yyyy/MM/dd HH:mm",
        "DoneAt": "yyyy/MM/dd HH:mm",
        "Plain": "yyyy/MM/dd",
    }
    assert {f["field_name"]: f["property"] for f in feishu.fields(APP_TOKEN, TABLE_ID)}["DoneAt"] == {
        "date_formatter": "yyyy/MM/dd HH:mm",
        "auto_fill": False,
    }


@pytest.mark.parametrize(
    ("type_", "prop"),
    [
        (5, AppTableFieldProperty.builder().date_formatter("HH:mm").build()),
        (5, AppTableFieldProperty.builder().date_formatter("yyyy/MM/dd hh:mm").build()),
        (2, AppTableFieldProperty.builder().formatter("0.00000").build()),
    ],
)
def test_column_properties_outside_the_field_guide_are_refused(feishu, client, type_, prop):
    resp = create_field(client, "Odd", type_, prop)
    assert resp.code == 1254001
    assert "Odd" not in {f["field_name"] for f in feishu.fields(APP_TOKEN, TABLE_ID)}


def test_auto_fill_must_be_a_boolean(feishu):
    resp = requests.post(
        f"{feishu.url}/open-apis/auth/v3/tenant_access_token/internal",
        json={"app_id": "cli_test", "app_secret": "test-secret"},
        timeout=5,
    ).json()
    headers = {"Authorization": f"Bearer {resp['tenant_access_token']}"}
    url = f"{feishu.url}/open-apis/bitable/v1/apps/{APP_TOKEN}/tables/{TABLE_ID}/fields"
    bad = {"field_name": "Odd", "type": 5, "property": {"auto_fill": "yes"}}
    assert requests.post(url, json=bad, headers=headers, timeout=5).json()["code"] == 1254001
    with pytest.raises(ValueError, match="1254001"):
        feishu.add_table(APP_TOKEN, "tblODD", [("When", 5, {"date_formatter": "dd.MM."})])


def test_add_table_with_custom_fields(feishu, records):
    feishu.add_table(APP_TOKEN, "tblCUSTOM", [("Name", 1), ("Made", 1001)])
    req = create_req([{"Name": "n"}], table_id="tblCUSTOM")
    assert records.batch_create(req).code == 0
    assert records.batch_create(create_req([{"Made": 1}], table_id="tblCUSTOM")).code != 0
    search = search_req()
    search.paths["table_id"] = "tblCUSTOM"
    (item,) = records.search(search).data.items
    assert set(item.fields) == {"Name", "Made"} and isinstance(item.fields["Made"], int)


# ---- calls, latency, ids -----------------------------------------------------------------------------
def test_calls_latency_and_counts(feishu, records):
    feishu.latency = 0.05
    assert records.batch_create(create_req([{"Identifier": "a"}, {"Identifier": "b"}])).code == 0
    token_call, create_call = feishu.calls
    assert token_call.endpoint == "token" and create_call.endpoint == "batch_create"
    assert create_call.method == "POST" and create_call.http_status == 200 and create_call.n_records == 2
    assert create_call.path == f"/open-apis/bitable/v1/apps/{APP_TOKEN}/tables/{TABLE_ID}/records/batch_create"
    assert create_call.t_end - create_call.t_start >= 0.05
    assert feishu.count() == 2 and feishu.count(code=0) == 2 and feishu.count("search") == 0
    feishu.reset_calls()
    assert feishu.calls == []


def test_record_ids_follow_the_seed():
    def ids(seed: int) -> list[str]:
        emu = FeishuEmulator(seed=seed)
        emu.add_table("a", "t")
        return emu.insert_rows("a", "t", [{}, {}, {}])

    assert ids(3) == ids(3) != ids(4)
    assert all(re.fullmatch(r"rec[A-Za-z0-9]{14}", i) for i in ids(3))


def test_rows_returns_copies(feishu):
    (rid,) = feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": "a"}])
    feishu.rows(APP_TOKEN, TABLE_ID)[rid]["Identifier"] = "changed"
    assert feishu.rows(APP_TOKEN, TABLE_ID)[rid]["Identifier"] == "a"


# ---- custom bot --------------------------------------------------------------------------------------
def test_bot_message_types(feishu):
    feishu.add_bot("hook")
    url = bot_url(feishu, "hook")
    good = [
        {"msg_type": "text", "content": {"text": "hi"}},
        {"msg_type": "post", "content": {"post": {"zh_cn": {"title": "t", "content": []}}}},
        {"msg_type": "interactive", "card": {"elements": []}},
    ]
    for msg in good:
        resp = requests.post(url, json=msg, timeout=5)
        assert resp.status_code == 200 and resp.json() == BOT_SUCCESS
    assert resp.content == b'{"StatusCode":0,"StatusMessage":"success","code":0,"data":{},"msg":"success"}'
    bad = [{"msg_type": "interactive", "content": {"card": {}}}, {"msg_type": "text"}, {"msg_type": "video"}]
    assert [requests.post(url, json=m, timeout=5).json()["code"] for m in bad] == [9499, 9499, 9499]
    big = {"msg_type": "text", "content": {"text": "x" * 20_500}}
    assert requests.post(url, json=big, timeout=5).json()["code"] == 9499
    assert feishu.bot_messages("hook") == good
    assert requests.post(bot_url(feishu, "unknown"), json=good[0], timeout=5).json()["code"] != 0


def test_bot_signature(feishu):
    feishu.add_bot("signed", secret="s3cret")
    url = bot_url(feishu, "signed")
    ts = str(int(time.time()))
    msg = {"msg_type": "text", "content": {"text": "hi"}}
    assert (
        requests.post(url, json={**msg, "timestamp": ts, "sign": bot_sign(ts, "s3cret")}, timeout=5).json()
        == BOT_SUCCESS
    )
    old = str(int(time.time()) - 3700)
    rejected = [
        {**msg, "timestamp": ts, "sign": bot_sign(ts, "wrong")},
        {**msg, "timestamp": old, "sign": bot_sign(old, "s3cret")},
        {**msg, "timestamp": ts},
        msg,
    ]
    assert [requests.post(url, json=m, timeout=5).json()["code"] for m in rejected] == [19021] * 4
    assert len(feishu.bot_messages("signed")) == 1


def test_bot_signature_matches_the_documented_recipe():
    import base64
    import hashlib
    import hmac

    expected = base64.b64encode(hmac.new(b"1700000000\nkey", b"", hashlib.sha256).digest()).decode()
    assert bot_sign("1700000000", "key") == expected


def test_bot_rate_limits(feishu):
    feishu.add_bot("hook")
    now = freeze_clock(feishu)
    url = bot_url(feishu, "hook")

    def send() -> int:
        return requests.post(url, json={"msg_type": "text", "content": {"text": "x"}}, timeout=5).json()["code"]

    assert [send() for _ in range(6)] == [0] * 5 + [11232]
    for _ in range(19):
        now[0] += 1.0
        assert [send() for _ in range(5)] == [0] * 5
    now[0] += 1.0
    assert send() == 11232  # 100 within the last minute
    assert len(feishu.bot_messages("hook")) == 100
    now[0] += 60.0
    assert send() == 0


# ---- command line ------------------------------------------------------------------------------------
def test_command_line_serves_until_interrupted():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.feishu.emulator",
            "--port",
            "0",
            "--app-token",
            APP_TOKEN,
            "--table-id",
            TABLE_ID,
            "--latency",
            "0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        settings = {}
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("serving"):
                break
            key, _, value = line.strip().partition("=")
            settings[key] = value
        assert settings["FEISHU_APP_ID"] == "cli_test" and settings["FEISHU_APP_SECRET"] == "test-secret"
        assert settings["FEISHU_TABLE_ID"] == TABLE_ID
        clear_token_cache()
        client = sdk_client(settings["FEISHU_DOMAIN"])
        resp = client.bitable.v1.app_table_record.batch_create(create_req([{"Identifier": "cli"}]))
        assert resp.code == 0
    finally:
        # SIGTERM, not SIGINT: a background job (`pytest &`) ignores SIGINT, and so would the emulator
        code = stop(proc, timeout=10)
        proc.stdout.close()
        clear_token_cache()
    assert code == 0, "the emulator should stop cleanly on SIGTERM"
