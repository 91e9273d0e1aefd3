"""The scoring bodies' fast path (one pydantic call from the raw bytes) against the thorough one (``parse_json``, then
``parse_transaction`` / ``parse_batch``): for any body, the same transactions or the same 4xx naming the same fields.
Bodies are drawn from awkward values for every field (absent, null, wrong types, out of range, lax spellings), with
duplicate keys, unknown fields, deep nesting, NaN literals and stray bytes around the JSON."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve.api import (
    ApiError,
    parse_batch,
    parse_batch_body,
    parse_json,
    parse_transaction,
    parse_transaction_body,
)

VALID = {
    "transaction_id": "t-1",
    "user_id": "u-1",
    "merchant_id": "m-1",
    "amount": 10.0,
    "timestamp": "2026-01-05T10:00:00Z",
}
ODD_VALUES: dict[str, list[Any]] = {
    "transaction_id": ["t-2", "", "x" * 65, 5, None, "ü", "a b", True],
    "user_id": ["u:2", 7.5, None, ["u"]],
    "merchant_id": ["m.3", "", {"id": "m"}],
    "amount": [5, 0, -1, 1_000_000, 1_000_000.0001, "10", None, True, 1e308, 12345678901234567890, 0.1],
    "timestamp": [
        "2026-01-05",
        "2026-01-05T10:00:00+01:00",
        " 2026-01-05T10:00:00z ",
        "bad",
        5,
        None,
        "2026-13-01",
        "0001-01-01T00:00:00+01:00",
        "2026-01-05T10:00:00.123456789Z",
    ],
    "currency": ["EUR", "usd", None, 5, "EURO"],
    "device_id": ["d-1", None, 5, ""],
    "channel": ["online", "ONLINE", None, 1, "mobile"],
    "mcc": ["5411", 5411, "541", None],
    "country": ["US", "us", None, "USA"],
    "lat": [1.0, 1, 91, None, "1.0", True, -90],
    "lon": [2.0, -180, 181, None],
    "is_fraud": [0, 1, True, False, "1", " 0 ", 1.0, 2, "true", None],
    "fraud_scenario": ["card_testing", None, "x" * 65, 5],
    "extra": [{"nested": [1, {"deeper": None}]}, "\u00e9", 1e400],
}


@st.composite
def transaction_text(draw: st.DrawFn) -> str:
    fields = {**VALID}
    for name in draw(st.lists(st.sampled_from(sorted(ODD_VALUES)), max_size=4, unique=True)):
        fields[name] = draw(st.sampled_from(ODD_VALUES[name]))
    for name in draw(st.lists(st.sampled_from(sorted(VALID)), max_size=1)):
        del fields[name]
    members = [f"{json.dumps(name)}: {json.dumps(value)}" for name, value in fields.items()]
    if draw(st.booleans()):  # a duplicate key: the last one wins on both paths
        name = draw(st.sampled_from(sorted(ODD_VALUES)))
        members.append(f"{json.dumps(name)}: {json.dumps(draw(st.sampled_from(ODD_VALUES[name])))}")
    if draw(st.booleans()):  # nesting below, between and above the two parsers' limits
        depth = draw(st.sampled_from([10, 300, 1100]))
        members.append('"deep": ' + "[" * depth + "]" * depth)
    if draw(st.booleans()):
        members.append('"nan": NaN')
    return "{" + ", ".join(members) + "}"


def _outcome(parse: Any, *args: Any) -> Any:
    try:
        return parse(*args)
    except ApiError as exc:
        return exc.status, exc.errors, exc.detail


STRAY = st.sampled_from(["", " \n", "\ufeff", " x", "}"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=transaction_text(), before=STRAY, after=STRAY)
def test_a_single_transaction_body_parses_as_the_thorough_path_does(text: str, before: str, after: str) -> None:
    body = (before + text + after).encode()
    assert _outcome(parse_transaction_body, body) == _outcome(lambda b: parse_transaction(parse_json(b)), body)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(transaction_text(), min_size=0, max_size=4),
    after=STRAY,
    wrapper=st.sampled_from(
        [
            '{{"transactions": [{}]}}',
            '{{"transactions": [{}], "other": 1}}',
            '{{"items": [{}]}}',
            "[{}]",
            '{{"transactions": {{"0": {}}}}}',
        ]
    ),
)
def test_a_batch_body_parses_as_the_thorough_path_does(items: list[str], after: str, wrapper: str) -> None:
    body = (wrapper.format(", ".join(items)) + after).encode()
    assert _outcome(parse_batch_body, body) == _outcome(lambda b: parse_batch(parse_json(b)), body)


def test_a_batch_over_the_limit_is_refused_by_both_paths_alike() -> None:
    body = json.dumps({"transactions": [{**VALID, "transaction_id": f"t-{i}"} for i in range(1001)]}).encode()
    fast, thorough = _outcome(parse_batch_body, body), _outcome(lambda b: parse_batch(parse_json(b)), body)
    assert fast == thorough and fast[0] == 422 and fast[1][0]["field"] == "transactions"
    assert [t.transaction_id for t in parse_batch_body(json.dumps({"transactions": [VALID]}).encode())] == ["t-1"]
