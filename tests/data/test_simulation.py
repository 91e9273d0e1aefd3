"""The transaction simulator: canonical output, realistic population, every fraud scenario's signature."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cluster.config import Settings
from cluster.datasets import read_transactions
from cluster.features import haversine_km
from cluster.profiles import MERCHANT_PROFILE_COLUMNS, USER_PROFILE_COLUMNS, profile_paths, scan_profiles
from cluster.schema import CANONICAL_COLUMNS, validate_frame
from fraudctl.cli import app
from simulation.generator import CITIES, MCCS, SimulatedHistory, SimulationConfig, build_population, simulate_history
from simulation.history import run_simulate
from simulation.scenarios import FRAUD_SCENARIOS

CONFIG = SimulationConfig(n_users=400, days=21, start=date(2026, 3, 2), seed=7, fraud_rate=0.01)


@pytest.fixture(scope="module")
def history() -> SimulatedHistory:
    return simulate_history(CONFIG)


@pytest.fixture(scope="module")
def tx(history: SimulatedHistory) -> pd.DataFrame:
    return history.transactions


def rows_of(tx: pd.DataFrame, scenario: str) -> pd.DataFrame:
    rows = tx[tx["fraud_scenario"] == scenario]
    assert len(rows) > 0, f"no {scenario} rows"
    return rows


def test_output_is_canonical_and_passes_the_schema(tx: pd.DataFrame) -> None:
    assert list(tx.columns) == [*CANONICAL_COLUMNS, "is_fraud", "fraud_scenario"]
    assert str(tx["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert tx["is_fraud"].dtype == np.int8
    pd.testing.assert_frame_equal(validate_frame(tx, labelled=True), tx)
    assert tx["timestamp"].is_monotonic_increasing
    assert tx["transaction_id"].is_unique and tx["transaction_id"].str.startswith("tx-").all()
    start = pd.Timestamp(CONFIG.start)
    assert tx["timestamp"].min() >= start and tx["timestamp"].max() < start + pd.Timedelta(days=CONFIG.days)
    assert ((tx["is_fraud"] == 1) == (tx["fraud_scenario"] != "none")).all()
    assert (tx["currency"] == "USD").all()


def test_channels_carry_the_right_fields(history: SimulatedHistory, tx: pd.DataFrame) -> None:
    assert set(tx["channel"]) == {"card_present", "online", "mobile"}
    present = tx[tx["channel"] == "card_present"]
    assert present["lat"].notna().all() and present["device_id"].isna().all()
    merchants = history.merchants.set_index("merchant_id")
    assert np.allclose(present["lat"], merchants.loc[present["merchant_id"], "lat"])
    remote = tx[tx["channel"] != "card_present"]
    assert remote["lat"].isna().all() and remote["device_id"].notna().all()
    genuine_remote = remote[remote["is_fraud"] == 0]
    users = history.users.set_index("user_id")
    own = users.loc[genuine_remote["user_id"]]
    belongs = (genuine_remote["device_id"].to_numpy() == own["device_primary"].to_numpy()) | (
        genuine_remote["device_id"].to_numpy() == own["device_secondary"].fillna("").to_numpy()
    )
    assert belongs.all()
    genuine_present = present[present["is_fraud"] == 0]
    at_home = genuine_present["country"].to_numpy() == users.loc[genuine_present["user_id"], "home_country"].to_numpy()
    assert 0.8 < at_home.mean() < 1.0  # mostly at home, some on trips


def test_genuine_card_present_travel_is_physically_possible(tx: pd.DataFrame) -> None:
    present = tx[tx["channel"] == "card_present"].sort_values(["user_id", "timestamp"], kind="stable")
    same_user = present["user_id"].to_numpy()[1:] == present["user_id"].to_numpy()[:-1]
    genuine_pair = (present["is_fraud"].to_numpy()[1:] == 0) & (present["is_fraud"].to_numpy()[:-1] == 0)
    lat, lon = present["lat"].to_numpy(), present["lon"].to_numpy()
    km = haversine_km(lat[:-1], lon[:-1], lat[1:], lon[1:])
    hours = np.diff(present["timestamp"].to_numpy()).astype("timedelta64[ms]").astype(float) / 3.6e6
    pairs = same_user & genuine_pair
    assert (km[pairs] > 1000).sum() > 0  # people do travel...
    assert (km[pairs] <= 1000 * np.maximum(hours[pairs], 0) + 1e-6).all()  # ...but never faster than a plane


def test_population_is_realistic(history: SimulatedHistory) -> None:
    users, merchants = history.users, history.merchants
    assert len(users) == CONFIG.n_users and users["user_id"].is_unique
    for column, dtype in USER_PROFILE_COLUMNS.items():
        assert str(users[column].dtype) == dtype, column
    for column, dtype in MERCHANT_PROFILE_COLUMNS.items():
        assert str(merchants[column].dtype) == dtype, column
    assert 0.8 < (users["home_country"] == "US").mean() < 0.97
    assert users["home_country"].nunique() > 5
    assert set(users["kyc_level"]) == {1, 2, 3}
    assert (users["account_opened"] < pd.Timestamp(CONFIG.start)).all()
    assert (users["credit_limit"] >= 300).all() and users["credit_limit"].max() > 10_000
    assert users["segment"].nunique() == 5
    assert users["device_primary"].notna().all() and 0.3 < users["device_secondary"].notna().mean() < 0.9
    assert (users["active_hour_peak"].between(0, 23)).all()
    assert merchants["mcc"].isin(MCCS["mcc"]).all() and merchants["mcc"].nunique() > 15
    online = merchants["online_only"]
    assert 0.1 < online.mean() < 0.5
    assert merchants.loc[online, "lat"].isna().all() and merchants.loc[~online, "lat"].notna().all()
    assert set(CITIES["city"]) <= set(merchants["city"].dropna())


def test_seasonality_daily_and_weekly(tx: pd.DataFrame) -> None:
    genuine = tx[(tx["is_fraud"] == 0) & (tx["country"] == "US")]
    local_hour = (genuine["timestamp"] - pd.Timedelta(hours=6)).dt.hour
    by_hour = local_hour.value_counts()
    assert by_hour.loc[[12, 13, 18, 19]].mean() > 4 * by_hour.loc[[2, 3, 4]].mean()
    by_weekday = genuine["timestamp"].dt.weekday.value_counts() / 3  # three of each weekday in 21 days
    assert by_weekday.loc[5] > 1.1 * by_weekday.loc[6]  # Saturday busier than Sunday


def test_every_scenario_appears(tx: pd.DataFrame) -> None:
    assert len(FRAUD_SCENARIOS) >= 6
    counts = tx["fraud_scenario"].value_counts()
    assert set(FRAUD_SCENARIOS) <= set(counts.index)
    assert (counts[list(FRAUD_SCENARIOS)] >= 0.5 * counts[list(FRAUD_SCENARIOS)].mean()).all()  # roughly even


def test_fraud_rate_within_tolerance(tx: pd.DataFrame) -> None:
    assert tx["is_fraud"].mean() == pytest.approx(CONFIG.fraud_rate, rel=0.1)
    other = simulate_history(SimulationConfig(n_users=300, days=14, seed=3, fraud_rate=0.004)).transactions
    assert other["is_fraud"].mean() == pytest.approx(0.004, rel=0.15)


def test_card_testing_is_tiny_charges_then_a_large_one(tx: pd.DataFrame) -> None:
    for _, incident in rows_of(tx, "card_testing").groupby("user_id"):
        probes, cash_in = incident.iloc[:-1], incident.iloc[-1]
        assert len(probes) >= 3 and (probes["amount"] < 5).all()
        assert probes["merchant_id"].nunique() >= 3
        assert probes["timestamp"].max() - probes["timestamp"].min() < pd.Timedelta(minutes=10)
        assert cash_in["amount"] >= 250
        assert pd.Timedelta(0) < cash_in["timestamp"] - probes["timestamp"].max() < pd.Timedelta(hours=1)
        assert incident["device_id"].nunique() == 1 and (incident["channel"] == "online").all()


def test_impossible_travel_implies_supersonic_speed(tx: pd.DataFrame) -> None:
    fraud = rows_of(tx, "impossible_travel")
    assert (fraud["channel"] == "card_present").all()
    present = tx[tx["channel"] == "card_present"]
    for _, row in fraud.iterrows():
        before = present[
            (present["user_id"] == row["user_id"])
            & (present["timestamp"] < row["timestamp"])
            & (present["fraud_scenario"] != "impossible_travel")
        ].iloc[-1]
        hours = (row["timestamp"] - before["timestamp"]).total_seconds() / 3600
        distance = haversine_km(before["lat"], before["lon"], row["lat"], row["lon"])
        assert distance >= 1500 and distance / hours > 1000, (distance, hours)


def test_account_takeover_uses_a_new_device_and_country_for_high_value(
    history: SimulatedHistory, tx: pd.DataFrame
) -> None:
    typical = history.users.set_index("user_id")["typical_amount"]
    for user, incident in rows_of(tx, "account_takeover").groupby("user_id"):
        earlier = tx[(tx["user_id"] == user) & (tx["timestamp"] < incident["timestamp"].min())]
        assert not incident["device_id"].isin(earlier["device_id"].dropna()).any()
        assert not incident["country"].isin(earlier["country"].dropna()).any()
        assert incident["country"].nunique() == 1 and incident["device_id"].nunique() == 1
        assert incident["channel"].isin(["online", "mobile"]).all()
        assert (incident["amount"] >= 300).all() and (incident["amount"] >= 5 * typical[user]).all()
        assert incident["timestamp"].max() - incident["timestamp"].min() < pd.Timedelta(hours=6)


def test_compromised_merchant_charges_are_all_fraud_for_days(tx: pd.DataFrame) -> None:
    spans = []
    for merchant, incident in rows_of(tx, "compromised_merchant").groupby("merchant_id"):
        first, last = incident["timestamp"].min(), incident["timestamp"].max()
        charged = tx[
            (tx["merchant_id"] == merchant) & (tx["channel"] == "card_present") & tx["timestamp"].between(first, last)
        ]
        assert (charged["is_fraud"] == 1).all()
        assert incident["user_id"].nunique() >= 2
        spans.append(last - first)
    assert max(spans) > pd.Timedelta(days=1)


def test_cnp_leak_amounts_are_inflated_over_days(history: SimulatedHistory, tx: pd.DataFrame) -> None:
    fraud = rows_of(tx, "cnp_leak")
    assert (fraud["channel"] == "online").all()
    typical = history.users.set_index("user_id")["typical_amount"]
    assert (fraud["amount"] >= 3 * typical.loc[fraud["user_id"]].to_numpy()).all()
    genuine_median = tx[tx["is_fraud"] == 0].groupby("user_id")["amount"].median()
    ratios = fraud["amount"].to_numpy() / genuine_median.loc[fraud["user_id"]].to_numpy()
    assert np.median(ratios) > 4
    spans = fraud.groupby("user_id")["timestamp"].agg(lambda t: t.max() - t.min())
    assert (spans > pd.Timedelta(hours=12)).mean() > 0.5


def test_cash_out_drains_the_credit_limit_quickly(history: SimulatedHistory, tx: pd.DataFrame) -> None:
    limit = history.users.set_index("user_id")["credit_limit"]
    for user, incident in rows_of(tx, "cash_out").groupby("user_id"):
        assert 0.8 * limit[user] <= incident["amount"].sum() <= limit[user]
        assert incident["timestamp"].max() - incident["timestamp"].min() < pd.Timedelta(hours=3)
        assert len(incident) >= 4


def test_same_seed_same_data_and_other_seed_other_data(history: SimulatedHistory) -> None:
    again = simulate_history(CONFIG)
    pd.testing.assert_frame_equal(again.transactions, history.transactions)
    pd.testing.assert_frame_equal(again.users, history.users)
    pd.testing.assert_frame_equal(again.merchants, history.merchants)
    other = simulate_history(SimulationConfig(n_users=400, days=21, start=date(2026, 3, 2), seed=8, fraud_rate=0.01))
    assert not other.transactions["amount"].head(100).equals(history.transactions["amount"].head(100))


def test_partitions_share_one_population_and_split_the_users() -> None:
    base = SimulationConfig(n_users=120, days=5, seed=11)
    users, merchants = build_population(base)
    parts = [
        simulate_history(SimulationConfig(n_users=120, days=5, seed=11, partition=(i, 3), id_prefix="w1"))
        for i in range(3)
    ]
    later = build_population(
        SimulationConfig(n_users=120, days=1, seed=11, start=datetime(2026, 5, 1, 13, 5, tzinfo=timezone.utc))
    )
    for population in (*((p.users, p.merchants) for p in parts), later):
        pd.testing.assert_frame_equal(population[0], users)
        pd.testing.assert_frame_equal(population[1], merchants)
    owners = [set(p.transactions["user_id"]) for p in parts]
    for i, part in enumerate(owners):
        index = users.set_index("user_id").loc[sorted(part), "user_index"]
        assert (index % 3 == i).all()
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    assert len(set().union(*owners)) >= 0.9 * len(users)
    ids = pd.concat([p.transactions["transaction_id"] for p in parts])
    assert ids.is_unique and ids.str.startswith("w1-").all()


def test_windows_follow_a_moving_start() -> None:
    window = SimulationConfig(
        n_users=100, days=1, seed=5, start=datetime(2026, 2, 3, 9, 30, tzinfo=timezone.utc), id_prefix="d1"
    )
    tx = simulate_history(window).transactions
    assert tx["timestamp"].min() >= pd.Timestamp(window.start)
    assert tx["timestamp"].max() < pd.Timestamp(window.end)
    assert tx["is_fraud"].sum() >= len(FRAUD_SCENARIOS)


def test_scenario_weights_choose_the_scenarios() -> None:
    tx = simulate_history(
        SimulationConfig(n_users=200, days=7, seed=2, scenario_weights={"card_testing": 1.0})
    ).transactions
    assert set(tx.loc[tx["is_fraud"] == 1, "fraud_scenario"]) == {"card_testing"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"partition": (3, 3)}, "partition"),
        ({"fraud_rate": 0.0}, "fraud_rate"),
        ({"n_users": 0}, "n_users"),
        ({"scenario_weights": {"phishing": 1.0}}, "scenario_weights"),
        ({"id_prefix": "bad prefix"}, "id_prefix"),
        ({"n_merchants": 5}, "n_merchants"),
    ],
)
def test_bad_config_names_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SimulationConfig(**change)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_fraudctl_simulate_end_to_end(tmp_path, suffix: str) -> None:
    out = tmp_path / f"history{suffix}"
    result = CliRunner().invoke(
        app, ["simulate", "--users", "60", "--days", "5", "--out", str(out), "--seed", "3", "--start", "2026-02-01"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    back = read_transactions(out, labelled=True)
    assert len(back) == summary["rows"] > 0
    assert back["transaction_id"].is_unique
    assert back["is_fraud"].sum() == summary["fraud_rows"] > 0
    assert summary["rows_per_scenario"] == back["fraud_scenario"].value_counts().sort_index().to_dict()
    assert back["timestamp"].min() >= pd.Timestamp("2026-02-01", tz="UTC")
    users_path, merchants_path = profile_paths(out)
    assert summary["files"] == {"transactions": str(out), "users": str(users_path), "merchants": str(merchants_path)}
    assert len(pd.read_parquet(users_path)) == 60 and len(pd.read_parquet(merchants_path)) == 200
    assert "sidecar" in summary["profiles"]


def test_run_simulate_loads_profiles_into_dynamodb(tmp_path, aws_settings: Settings) -> None:
    # another process pointed at a running endpoint (e.g. `fraudctl up`) sees it as configured AWS
    live = aws_settings.model_copy(update={"aws_mode": "real", "embedded_aws": False})
    summary = run_simulate(
        live, out=tmp_path / "h.parquet", users=40, days=3, start=date(2026, 1, 5), seed=1, fraud_rate=0.01
    )
    assert "DynamoDB" in summary["profiles"]
    users = scan_profiles(live.user_table, USER_PROFILE_COLUMNS, live)
    merchants = scan_profiles(live.merchant_table, MERCHANT_PROFILE_COLUMNS, live)
    assert len(users) == 40 and len(merchants) == 200
    expected, _ = build_population(SimulationConfig(n_users=40, seed=1))
    stored = users.set_index("user_id").sort_index()
    assert np.allclose(stored["credit_limit"], expected.set_index("user_id").sort_index()["credit_limit"])
