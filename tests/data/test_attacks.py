"""Attacks launched from the dashboard: one scenario's incidents starting at the simulated now, reproducibly."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest

from cluster.features import haversine_km
from cluster.schema import validate_frame
from simulation.generator import ATTACK_WINDOW, SimulationConfig, simulate_attack
from simulation.scenarios import FRAUD_SCENARIOS, INCIDENT_ROWS, attack_budget

NOW = datetime(2026, 3, 4, 13, 7, 21, tzinfo=timezone.utc)
CONFIG = SimulationConfig(n_users=600, days=1, start=NOW, seed=9, partition=(1, 2), id_prefix="p1atk3-20260304")


@pytest.mark.parametrize("scenario", FRAUD_SCENARIOS)
def test_an_attack_is_that_scenario_starting_now(scenario: str) -> None:
    rows = simulate_attack(CONFIG, scenario, incidents=4)
    validate_frame(rows, labelled=True)
    fraud = rows[rows["is_fraud"] == 1]
    assert set(fraud["fraud_scenario"]) == {scenario}
    assert len(fraud) >= attack_budget(scenario, 4) // 2
    assert rows["timestamp"].is_monotonic_increasing
    assert rows["timestamp"].min() >= pd.Timestamp(NOW)
    assert fraud["timestamp"].min() < pd.Timestamp(NOW + ATTACK_WINDOW)
    genuine = rows[rows["is_fraud"] == 0]
    assert set(genuine["fraud_scenario"]) <= {"none"} and set(genuine["user_id"]) <= set(fraud["user_id"])
    assert rows["transaction_id"].is_unique and rows["transaction_id"].str.startswith("p1atk3-20260304-").all()


def test_impossible_travel_attack_carries_the_real_swipe_it_is_measured_from() -> None:
    rows = simulate_attack(CONFIG, "impossible_travel", incidents=3)
    for _, swipe in rows[rows["is_fraud"] == 1].iterrows():
        before = rows[
            (rows["user_id"] == swipe["user_id"])
            & (rows["is_fraud"] == 0)
            & (rows["channel"] == "card_present")
            & (rows["timestamp"] < swipe["timestamp"])
        ]
        assert len(before), "the victim's own swipe is not in the attack"
        real = before.iloc[-1]
        hours = (swipe["timestamp"] - real["timestamp"]).total_seconds() / 3600
        assert haversine_km(real["lat"], real["lon"], swipe["lat"], swipe["lon"]) / hours > 1000


def test_same_attack_same_rows_and_budget_follows_incidents() -> None:
    pd.testing.assert_frame_equal(simulate_attack(CONFIG, "cash_out", 3), simulate_attack(CONFIG, "cash_out", 3))
    fewest, most = INCIDENT_ROWS["card_testing"]
    assert attack_budget("card_testing", 5) == 5 * round((fewest + most) / 2)
    with pytest.raises(ValueError, match="scenario"):
        attack_budget("phishing", 1)
    with pytest.raises(ValueError, match="incidents"):
        attack_budget("cash_out", 0)
