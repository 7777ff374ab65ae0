"""The identifier: sha256 of canonical JSON, key order ignored, DEDUP_KEYS honoured, bad values refused."""

import hashlib
import json

import pytest

from app.errors import InvalidInput
from app.identity import canonical_json, task_identifier


def reference_identifier(payload: dict) -> str:
    """docs/design.md, "Identity", written out independently of app.identity."""
    data = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "payload",
    [{"b": 1, "a": [1, 2, {"z": None, "y": "é"}]}, {"名字": "任务", "n": 1.5}, {}, {"nested": {"k": True}}],
)
def test_identifier_is_the_sha256_of_canonical_json(payload):
    assert task_identifier(payload) == reference_identifier(payload)


def test_key_order_does_not_change_the_identifier():
    assert task_identifier({"a": 1, "b": 2}) == task_identifier({"b": 2, "a": 1})


def test_canonical_json_is_compact_sorted_and_keeps_unicode():
    assert canonical_json({"b": "é", "a": 1}) == '{"a":1,"b":"é"}'


def test_dedup_keys_hash_only_those_keys():
    one = {"alpha": "x", "region": "USA", "scraped_at": 1}
    two = {"alpha": "x", "region": "USA", "scraped_at": 2}
    assert task_identifier(one, ["alpha", "region"]) == task_identifier(two, ["alpha", "region"])
    assert task_identifier(one, ["alpha", "region"]) == reference_identifier({"alpha": "x", "region": "USA"})
    assert task_identifier(one) != task_identifier(two)


def test_dedup_keys_missing_from_a_payload_leave_the_rest_hashed():
    assert task_identifier({"alpha": "x"}, ["alpha", "region"]) == reference_identifier({"alpha": "x"})


def test_a_payload_with_none_of_the_dedup_keys_is_refused():
    with pytest.raises(InvalidInput, match="DEDUP_KEYS"):
        task_identifier({"other": 1}, ["alpha"])


@pytest.mark.parametrize("payload", [{"x": float("nan")}, {"x": float("inf")}, {"x": "\ud800"}])
def test_values_json_cannot_carry_are_refused(payload):
    with pytest.raises(InvalidInput):
        canonical_json(payload)
