"""The canonical transaction: every valid form accepted, each invalid one rejected with its field named."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from cluster.datasets import read_transactions, write_transactions
from cluster.schema import FrameValidationError, Transaction, field_errors, validate_frame

MINIMAL = {
    "transaction_id": "tx-1",
    "user_id": "card_42",
    "merchant_id": "term.7:a",
    "amount": 12.5,
    "timestamp": "2026-03-01T12:00:00",
}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"amount": 1_000_000},
        {"amount": 0.01},
        {"amount": 3},
        {"timestamp": "2026-03-01T12:00:00Z"},
        {"timestamp": "2026-03-01T14:00:00+02:00"},
        {"timestamp": "2026-03-01"},
        {"currency": "EUR", "device_id": "dev-1", "channel": "online", "mcc": "5411", "country": "DE"},
        {"lat": 52.52, "lon": 13.40},
        {"lat": -90, "lon": 180},
        {"lat": None, "lon": None, "channel": None, "currency": None},
        {"is_fraud": 1, "fraud_scenario": "card_testing"},
        {"is_fraud": True},
        {"unknown_field": {"nested": [1, 2]}, "another": None},
        {"transaction_id": "A" * 64},
    ],
)
def test_valid_transactions_are_accepted(extra: dict) -> None:
    tx = Transaction.model_validate({**MINIMAL, **extra})
    assert tx.timestamp.tzinfo is not None
    assert tx.currency == extra.get("currency") or tx.currency == "USD"


def test_timestamp_without_offset_means_utc_and_offsets_are_converted() -> None:
    assert Transaction.model_validate(MINIMAL).timestamp == datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    shifted = Transaction.model_validate({**MINIMAL, "timestamp": "2026-03-01T14:00:00+02:00"})
    assert shifted.timestamp == datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"transaction_id": ""}, "transaction_id"),
        ({"transaction_id": "A" * 65}, "transaction_id"),
        ({"transaction_id": "has space"}, "transaction_id"),
        ({"transaction_id": 123}, "transaction_id"),
        ({"user_id": "ü"}, "user_id"),
        ({"merchant_id": None}, "merchant_id"),
        ({"amount": 0}, "amount"),
        ({"amount": -5}, "amount"),
        ({"amount": 1_000_000.01}, "amount"),
        ({"amount": float("nan")}, "amount"),
        ({"amount": float("inf")}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": "12.5"}, "amount"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": 1_700_000_000}, "timestamp"),
        ({"timestamp": "2026-13-01T00:00:00"}, "timestamp"),
        ({"currency": "usd"}, "currency"),
        ({"channel": "atm"}, "channel"),
        ({"mcc": "54"}, "mcc"),
        ({"country": "USA"}, "country"),
        ({"lat": 91, "lon": 0}, "lat"),
        ({"lat": 0, "lon": -181}, "lon"),
        ({"lat": 10.0}, "lon"),
        ({"lon": 10.0}, "lat"),
        ({"lat": True, "lon": 1.0}, "lat"),
        ({"is_fraud": 2}, "is_fraud"),
    ],
)
def test_invalid_transactions_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Transaction.model_validate({**MINIMAL, **change})
    assert field in {error["field"] for error in field_errors(caught.value)}


@pytest.mark.parametrize("missing", ["transaction_id", "user_id", "merchant_id", "amount", "timestamp"])
def test_missing_required_fields_are_named(missing: str) -> None:
    payload = {k: v for k, v in MINIMAL.items() if k != missing}
    with pytest.raises(ValidationError) as caught:
        Transaction.model_validate(payload)
    assert [e["field"] for e in field_errors(caught.value)] == [missing]


def frame(**columns) -> pd.DataFrame:
    base = {k: [v, v] for k, v in MINIMAL.items()}
    base["transaction_id"] = ["tx-1", "tx-2"]
    base.update(columns)
    return pd.DataFrame(base)


def test_frames_follow_the_same_rules_and_name_row_and_field() -> None:
    good = validate_frame(frame(lat=[1.0, None], lon=[2.0, None], channel=["online", None]))
    assert str(good["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert list(good["currency"]) == ["USD", "USD"]
    assert np.isnan(good.loc[1, "lat"]) and pd.isna(good.loc[1, "channel"])
    for columns, field in [
        ({"amount": [1.0, -1.0]}, "amount"),
        ({"user_id": ["ok", "not ok"]}, "user_id"),
        ({"timestamp": ["2026-01-01", "nope"]}, "timestamp"),
        ({"channel": ["online", "atm"]}, "channel"),
        ({"lat": [1.0, 2.0], "lon": [1.0, None]}, "lat/lon"),
    ]:
        with pytest.raises(FrameValidationError) as caught:
            validate_frame(frame(**columns))
        assert [(e["row"], e["field"]) for e in caught.value.errors] == [(1, field)]


def test_missing_required_column_and_unknown_columns() -> None:
    with pytest.raises(FrameValidationError, match="amount"):
        validate_frame(frame().drop(columns=["amount"]))
    assert "surprise" not in validate_frame(frame(surprise=[1, 2])).columns
    with pytest.raises(FrameValidationError, match="is_fraud"):
        validate_frame(frame(), labelled=True)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_files_round_trip_in_canonical_form(tmp_path, suffix: str) -> None:
    original = validate_frame(
        frame(is_fraud=[0, 1], mcc=["0742", "5411"], lat=[1.5, None], lon=[2.5, None]), labelled=True
    )
    path = write_transactions(original, tmp_path / f"tx{suffix}")
    back = read_transactions(path, labelled=True)
    pd.testing.assert_frame_equal(back[original.columns], original, check_dtype=False)
    assert list(back["mcc"]) == ["0742", "5411"]
