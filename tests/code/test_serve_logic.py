"""Serving logic without a cluster: reason codes, request parsing, canary draws, the champion/challenger test, the
Serve mode's environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI, Security

from cluster.config import Settings
from cluster.features import FEATURE_NAMES
from serve.api import (
    API_KEY_SCHEME,
    BATCH_BODY,
    FEEDBACK_BODY,
    KEY_ERRORS,
    TRANSACTION_BODY,
    ApiError,
    document_security,
    parse_batch,
    parse_feedback,
    parse_json,
    parse_transaction,
)
from serve.champion import compare, in_canary, mcnemar
from serve.reasons import AUTOENCODER_REASON, explain_row
from serve.runtime import haproxy_folder, serve_env

VALID = {
    "transaction_id": "t-1",
    "user_id": "u-1",
    "merchant_id": "m-1",
    "amount": 10.0,
    "timestamp": "2026-01-05T10:00:00",
}


def _row(**values: float) -> tuple[np.ndarray, np.ndarray]:
    names = list(FEATURE_NAMES)
    x, contributions = np.zeros(len(names), np.float32), np.zeros(len(names) + 1, np.float32)
    for name, (value, contribution) in values.items():
        x[names.index(name)], contributions[names.index(name)] = value, contribution
    return x, contributions


def test_reasons_are_sentences_ordered_by_summed_contribution() -> None:
    x, contributions = _row(
        amount_to_user_mean_30d=(6.2, 0.9),
        log_amount=(np.log1p(310.0), 0.4),
        amount=(310.0, 0.0),
        new_device=(1.0, 1.1),
        merchant_fraud_count_7d=(4.0, 0.3),
        is_weekend=(1.0, -0.8),
        kyc_level=(1.0, 0.01),
    )
    reasons = explain_row(FEATURE_NAMES, x, contributions, ae_score=0.2, ae_weight=0.3)
    assert reasons == [
        "Amount $310 is 6.2× this card's 30-day average",  # 0.9 + 0.4 from the amount group
        "First purchase from this device on this card in 30 days",
        "Merchant had 4 confirmed frauds in the last 7 days",
    ]


def test_a_score_the_merchant_floor_set_is_explained_first_by_the_merchants_fraud_rate() -> None:
    x, contributions = _row(
        new_device=(1.0, 1.1),
        merchant_risk_7d=(0.4, 0.3),
        merchant_delayed_risk_7d=(0.625, 0.0),
        merchant_delayed_count_7d=(80.0, 0.0),
    )
    floored = explain_row(FEATURE_NAMES, x, contributions, ae_score=0.2, ae_weight=0.0, merchant_floor=True)
    assert floored == [
        "Merchant fraud rate 62% over a fully labelled 7-day window",  # the group's XGBoost sentence gives way
        "First purchase from this device on this card in 30 days",
    ]
    assert explain_row(FEATURE_NAMES, x, contributions, ae_score=0.2, ae_weight=0.0) == [
        "First purchase from this device on this card in 30 days",
        "Merchant fraud rate 40% over the last 7 days",
    ]


def test_unusual_autoencoder_reason_follows_the_strongest_and_the_list_is_capped() -> None:
    x, contributions = _row(
        new_device=(1.0, 2.0),
        user_count_10m=(7.0, 1.5),
        speed_from_prev_kmh=(900.0, 1.2),
        user_tiny_count_10m=(3.0, 1.0),
        channel_online=(1.0, 0.8),
        is_night=(1.0, 0.6),
    )
    reasons = explain_row(FEATURE_NAMES, x, contributions, ae_score=0.999, ae_weight=0.3)
    assert len(reasons) == 5 and reasons[:2] == [
        "First purchase from this device on this card in 30 days",
        AUTOENCODER_REASON,
    ]
    assert reasons[2] == "7 purchases by this card in the last 10 minutes, this one included"
    assert AUTOENCODER_REASON not in explain_row(FEATURE_NAMES, x, contributions, ae_score=0.999, ae_weight=0.0)


def test_parsing_names_every_offending_field() -> None:
    assert parse_transaction({**VALID, "extra": {"nested": 1}}).amount == 10.0
    with pytest.raises(ApiError) as caught:
        parse_batch({"transactions": [VALID, {**VALID, "amount": "10"}, {**VALID, "lat": 1.0}, 7]})
    fields = [e["field"] for e in caught.value.errors]
    assert caught.value.status == 422
    assert fields == ["transactions.1.amount", "transactions.2.lon", "transactions.3"]
    with pytest.raises(ApiError) as caught:
        parse_feedback({"transaction_id": "t-1", "is_fraud": 1, "reported_at": 5})
    assert [e["field"] for e in caught.value.errors] == ["reported_at"]
    assert parse_feedback({"transaction_id": "t-1", "is_fraud": True}).record()["is_fraud"] == 1


def _raw(**changes: str) -> bytes:
    """VALID as JSON text with some values replaced by raw JSON text (``amount="1e400"``)."""
    fields = {key: json.dumps(value) for key, value in VALID.items()} | changes
    return ("{" + ",".join(f'"{key}":{text}' for key, text in fields.items()) + "}").encode()


HOSTILE_BODIES = [
    ("nested 5,000 levels", b'{"a":' * 5000 + b"1" + b"}" * 5000, 400, "body"),
    ("nested 1,025 levels of lists", b"[" * 1025 + b"]" * 1025, 400, "body"),
    ("nested 1,000 levels with a NaN", b'{"x":NaN,"a":' + b"[" * 1000 + b"]" * 1000 + b"}", 400, "body"),
    ("amount 1e400", _raw(amount="1e400"), 422, "amount"),
    ("amount -1e400", _raw(amount="-1e400"), 422, "amount"),
    ("amount of 10,000 digits", _raw(amount="9" * 10_000), 422, "amount"),
    ("lat of 10,000 digits", _raw(lat="1" * 10_000, lon="1"), 422, "lat"),
    ("transaction_id of 100,000 characters", _raw(transaction_id=json.dumps("t" * 100_000)), 422, "transaction_id"),
    ("timestamp of 100,000 characters", _raw(timestamp=json.dumps("2" * 100_000)), 422, "timestamp"),
    ("invalid UTF-8", _raw(user_id='"u\u00e9"').replace("\u00e9".encode(), b"\xff\xfe"), 400, "body"),
    ("lone surrogate escape", _raw(user_id='"u\\ud800"'), 422, "user_id"),
    ("duplicate key, the last one invalid", _raw(amount="10").replace(b"}", b',"amount":-1}'), 422, "amount"),
    ("empty body", b"", 400, "body"),
    ("form fields", b"transaction_id=t-1&amount=10", 400, "body"),
]


@pytest.mark.parametrize("case,body,status,field", HOSTILE_BODIES, ids=[c[0] for c in HOSTILE_BODIES])
def test_hostile_bodies_are_4xx_naming_the_field(case: str, body: bytes, status: int, field: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_transaction(parse_json(body))
    assert caught.value.status == status
    assert field in [e["field"] for e in caught.value.errors]
    assert len(json.dumps(caught.value.errors)) < 1000  # a long value is not echoed back


def test_harmless_extras_and_a_valid_last_duplicate_are_accepted() -> None:
    """Deep nesting within orjson's 1,024 levels, huge numbers and long strings in ignored fields, a duplicate key
    whose last value is valid (the last one wins), a byte order mark, a lone surrogate escape in an ignored field: all
    still score."""
    deep = b'{"a":' * 1000 + b"1" + b"}" * 1000
    bodies = [
        _raw(extra=deep.decode()),
        _raw(extra="9" * 10_000),
        _raw(extra="1e400"),
        _raw(extra=json.dumps("x" * 500_000)),
        _raw(amount="-1").replace(b"}", b',"amount":10}'),
        b"\xef\xbb\xbf" + _raw(),
        _raw(extra='"\\ud800"'),
    ]
    for body in bodies:
        assert parse_transaction(parse_json(body)).amount == 10.0


def test_a_non_json_body_names_its_content_type() -> None:
    with pytest.raises(ApiError) as caught:
        parse_json(b"a=1&b=2", "application/x-www-form-urlencoded")
    assert "application/x-www-form-urlencoded" in caught.value.errors[0]["message"]
    assert parse_json(_raw(), "text/plain")["amount"] == 10.0  # JSON is JSON whatever the header says


def _body(extra: dict) -> dict:
    return extra["requestBody"]["content"]["application/json"]["schema"]


SCHEMA_CASES = [
    (TRANSACTION_BODY, parse_transaction, VALID),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "is_fraud": False}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "is_fraud": " 1 "}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "is_fraud": 1.0}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "is_fraud": 2}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "is_fraud": "true"}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "currency": None}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "lat": 1.0}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "lon": 1.0}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "lat": None, "lon": 1.0}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "lat": None, "lon": None}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "lat": 1.0, "lon": 2.0}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "amount": 0}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "amount": 1_000_000}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "amount": True}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "timestamp": "0001-01-01T00:00:00+01:00"}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "timestamp": "9999-12-31T23:00:00-01:00"}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "timestamp": "0001-01-01T00:00:00Z"}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "transaction_id": "x" * 65}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "fraud_scenario": "x" * 65}),
    (TRANSACTION_BODY, parse_transaction, {**VALID, "channel": "fax"}),
    (BATCH_BODY, parse_batch, {"transactions": []}),
    (BATCH_BODY, parse_batch, {"transactions": [VALID]}),
    (BATCH_BODY, parse_batch, {"transactions": [VALID] * 1000}),
    (BATCH_BODY, parse_batch, {"transactions": [VALID] * 1001}),
    (BATCH_BODY, parse_batch, {"transactions": [{**VALID, "lat": 3.0}]}),
    (FEEDBACK_BODY, parse_feedback, {"transaction_id": "t-1", "is_fraud": False}),
    (FEEDBACK_BODY, parse_feedback, {"transaction_id": "t-1", "is_fraud": "1"}),
    (FEEDBACK_BODY, parse_feedback, {"transaction_id": "t-1", "is_fraud": 1, "reported_at": None}),
    (FEEDBACK_BODY, parse_feedback, {"transaction_id": "t-1", "is_fraud": None}),
]


@pytest.mark.parametrize("extra,parse,payload", SCHEMA_CASES, ids=[str(i) for i in range(len(SCHEMA_CASES))])
def test_the_openapi_body_schema_accepts_what_the_validator_accepts(extra: dict, parse: Any, payload: dict) -> None:
    """The documented request bodies (generated from the same models) agree with the parser both ways."""
    documented = jsonschema.Draft202012Validator(_body(extra)).is_valid(payload)
    try:
        parse(payload)
        accepted = True
    except ApiError:
        accepted = False
    assert documented == accepted, payload


def test_the_document_asks_for_the_key_only_where_one_is_configured() -> None:
    def document(key_configured: bool) -> dict:
        app = FastAPI()
        app.post("/write", responses=KEY_ERRORS, dependencies=[Security(API_KEY_SCHEME)])(lambda: None)
        document_security(app, key_configured)
        return app.openapi()

    with_key, without = document(True), document(False)
    assert with_key["paths"]["/write"]["post"]["security"] == [{"ApiKey": []}]
    assert with_key["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
    assert "401" in with_key["paths"]["/write"]["post"]["responses"]
    assert "security" not in without["paths"]["/write"]["post"] and "securitySchemes" not in without["components"]
    assert "401" not in without["paths"]["/write"]["post"]["responses"]


def test_canary_draw_is_stable_and_near_its_share() -> None:
    ids = [f"tx-{i}" for i in range(20_000)]
    drawn = [in_canary(i, 0.1) for i in ids]
    assert drawn == [in_canary(i, 0.1) for i in ids] and 0.09 < np.mean(drawn) < 0.11
    assert not any(in_canary(i, 0.0) for i in ids[:100])


def test_mcnemar_exact_and_asymptotic() -> None:
    champion = np.array([True] * 10 + [False] * 10)
    challenger = np.array([True] * 10 + [True] * 10)
    exact = mcnemar(champion, challenger)
    assert exact["method"] == "exact" and exact["only_challenger_correct"] == 10
    assert exact["p_value"] == pytest.approx(2 * 0.5**10, abs=1e-6)
    big = mcnemar(np.r_[np.ones(40, bool), np.zeros(60, bool)], np.r_[np.zeros(40, bool), np.ones(60, bool)])
    assert big["method"].startswith("chi-square") and big["p_value"] == pytest.approx(
        0.0574, abs=1e-3
    )  # (|40 - 60| - 1)² / 100 = 3.61


def test_compare_reports_precision_recall_of_both_models() -> None:
    decisions = pd.DataFrame(
        {
            "transaction_id": ["a", "b", "c", "d"],
            "champion_version": "v1",
            "challenger_version": "v2",
            "champion_is_fraud": [True, True, False, False],
            "challenger_is_fraud": [True, False, True, False],
        }
    )
    feedback = pd.DataFrame(
        {
            "transaction_id": ["a", "b", "c", "d", "c"],
            "is_fraud": [1, 0, 0, 0, 1],
            "reported_at": ["1", "1", "1", "1", "2"],
        }
    )  # the later verdict on c wins
    report = compare(decisions, feedback)
    assert report["labelled"] == 4 and report["frauds"] == 2
    assert report["champion"] == {"versions": ["v1"], "alerts": 2, "caught": 1, "precision": 0.5, "recall": 0.5}
    assert report["challenger"] == {"versions": ["v2"], "alerts": 2, "caught": 2, "precision": 1.0, "recall": 1.0}
    assert report["significance"]["test"] == "mcnemar" and report["significance"]["only_challenger_correct"] == 2


def test_stats_percentiles_cover_the_last_minute_only() -> None:
    """A start-up backlog's stream lag ages out of /api/stats instead of dominating p99 for minutes."""
    from serve.stats import PERCENTILE_WINDOW_S, StatsCollector

    now = [0.0]
    stats = StatsCollector(clock=lambda: now[0])
    stats.record(scored=5, latencies_ms=[1.0, 2.0, 3.0], stream_lags_ms=[10_000.0] * 5)
    now[0] = PERCENTILE_WINDOW_S / 2
    stats.record(scored=5, latencies_ms=[4.0], stream_lags_ms=[100.0] * 5)
    assert stats.snapshot()["stream_lag_ms"]["p99"] == 10_000.0
    now[0] = PERCENTILE_WINDOW_S + 1
    snapshot = stats.snapshot()
    assert snapshot["stream_lag_ms"] == {"p50": 100.0, "p99": 100.0}
    assert snapshot["latency_ms"] == {"p50": 4.0, "p99": 4.0}
    assert snapshot["scored"] == 10


def test_serve_mode_sets_the_ingress_drain_from_settings(tmp_path: Path) -> None:
    """Serve's own 30 s drain, meant for load balancers in front of replicas, made every shutdown wait 30 s behind
    HAProxy, which retries a refused connection on another replica."""
    env = serve_env(Settings(data_dir=tmp_path, serve_drain_s=2.0))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "2"
    assert serve_env(Settings(data_dir=tmp_path, serve_haproxy=False)) == {}


def test_haproxy_keeps_its_files_in_one_short_folder_per_data_dir(tmp_path: Path) -> None:
    """HAProxy refuses a socket path over 97 characters once it adds its own 40-character folder, and the folder
    is per data dir so that two Serve instances never share one (``stop_serve`` removes it)."""
    settings = Settings(data_dir=tmp_path)
    env = serve_env(settings)
    folder = haproxy_folder(settings)
    assert folder.is_dir() and env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] == str(folder)
    assert len(env["RAY_SERVE_HAPROXY_SOCKET_PATH"]) + 40 <= 97
    assert haproxy_folder(Settings(data_dir=tmp_path / "other")) != folder
    folder.rmdir()


def test_the_anomaly_lane_gives_the_autoencoders_reason_even_at_weight_zero() -> None:
    x, contributions = _row(new_device=(1.0, 0.3))
    in_lane = explain_row(FEATURE_NAMES, x, contributions, ae_score=0.9991, ae_weight=0.0, anomaly_review=0.999)
    assert in_lane == ["First purchase from this device on this card in 30 days", AUTOENCODER_REASON]
    below = explain_row(FEATURE_NAMES, x, contributions, ae_score=0.9989, ae_weight=0.0, anomaly_review=0.999)
    assert AUTOENCODER_REASON not in below
