"""Shifting the simulated world: a stable share of rows changes as asked, labels never, and the CLI names a bad
key or value."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cluster.config import get_settings
from cluster.datasets import read_transactions
from cluster.schema import LABEL_COLUMN, MAX_AMOUNT, validate_frame
from simulation.generator import SimulationConfig, simulate_history
from simulation.world_shift import NEW_MERCHANT_PREFIX, WorldShift, parse_shift


@pytest.fixture(scope="module")
def traffic() -> pd.DataFrame:
    return simulate_history(SimulationConfig(n_users=300, days=3, seed=5)).transactions


def test_no_shift_changes_nothing(traffic: pd.DataFrame) -> None:
    assert WorldShift().changes_nothing and WorldShift().apply(traffic) is traffic
    assert WorldShift().describe() == "no shift"


def test_amounts_inflate_on_a_stable_share_and_labels_stay(traffic: pd.DataFrame) -> None:
    shift = WorldShift(share=0.5, amount_factor=3)
    shifted = shift.apply(traffic)
    rows = shift.shifted_rows(traffic["transaction_id"])
    assert 0.45 < rows.mean() < 0.55
    assert (shift.shifted_rows(traffic["transaction_id"].iloc[::-1]) == rows[::-1]).all()  # by id, not position
    expected = (traffic.loc[rows, "amount"] * 3).clip(upper=MAX_AMOUNT).round(2)
    assert (shifted.loc[rows, "amount"] - expected).abs().max() < 1e-9
    assert shifted.loc[~rows, "amount"].equals(traffic.loc[~rows, "amount"])
    assert shifted[LABEL_COLUMN].equals(traffic[LABEL_COLUMN])
    assert shifted["transaction_id"].equals(traffic["transaction_id"])
    assert traffic["amount"].max() <= MAX_AMOUNT


def test_merchants_country_and_missing_fields_shift_and_stay_valid(traffic: pd.DataFrame) -> None:
    shift = WorldShift(share=0.3, new_merchants=20, country="BR", missing=("device_id", "lat", "lon"))
    shifted = shift.apply(traffic)
    rows = shift.shifted_rows(traffic["transaction_id"])
    assert shifted.loc[rows, "merchant_id"].str.startswith(NEW_MERCHANT_PREFIX).all()
    assert shifted.loc[rows, "merchant_id"].nunique() <= 20
    assert not traffic["merchant_id"].str.startswith(NEW_MERCHANT_PREFIX).any()
    assert (shifted.loc[rows, "country"] == "BR").all()
    assert shifted.loc[rows, ["device_id", "lat", "lon"]].isna().all().all()
    assert shifted.loc[~rows, "device_id"].equals(traffic.loc[~rows, "device_id"])
    assert len(validate_frame(shifted)) == len(traffic)  # still valid transactions: None where a field is optional


def test_the_text_form_parses_and_bad_values_are_named() -> None:
    shift = parse_shift("amount_factor=3, share=0.25, missing=device_id+country")
    assert shift == WorldShift(amount_factor=3.0, share=0.25, missing=("device_id", "country"))
    assert shift.describe() == "amount ×3, device_id+country missing on 25% of the traffic"
    for text, field in (
        ("share=2", "share"),
        ("amount_factor=-1", "amount_factor"),
        ("country=brazil", "country"),
        ("missing=email", "missing"),
        ("colour=red", "colour"),
    ):
        with pytest.raises(ValidationError) as error:
            parse_shift(text)
        assert error.value.errors()[0]["loc"][0] == field
    with pytest.raises(ValueError, match="key=value"):
        parse_shift("amount")


def test_simulate_writes_a_history_shifted_from_a_day_on(tmp_path: Path) -> None:
    from fraudctl.cli import app

    out = tmp_path / "history.parquet"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "simulate",
            "--out",
            str(out),
            "--users",
            "200",
            "--days",
            "4",
            "--start",
            "2026-03-01",
            "--shift",
            "amount_factor=4,share=1",
            "--shift-from",
            "2026-03-03",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["world_shift"] == "amount ×4 on 100% of the traffic from 2026-03-03"
    shifted = read_transactions(out)
    plain = simulate_history(
        SimulationConfig(
            n_users=200, days=4, start=date(2026, 3, 1), seed=summary["seed"], fraud_rate=get_settings().fraud_rate
        )
    ).transactions
    merged = shifted.merge(plain, on="transaction_id", suffixes=("", "_plain"))
    later = pd.to_datetime(merged["timestamp"], utc=True) >= pd.Timestamp("2026-03-03", tz="UTC")
    assert len(merged) == len(plain) and later.any() and (~later).any()
    assert (merged.loc[~later, "amount"] == merged.loc[~later, "amount_plain"]).all()
    ratio = merged.loc[later, "amount"] / merged.loc[later, "amount_plain"]
    assert ((ratio - 4).abs() < 0.01).all()
    bad = runner.invoke(app, ["simulate", "--out", str(out), "--shift", "share=3"])
    assert bad.exit_code == 2 and "share" in bad.output
