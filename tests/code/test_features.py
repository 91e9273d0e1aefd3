"""Known answers for every feature family on small hand-made sequences."""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

import cluster.features
from cluster.features import (
    DAY_MS,
    FEATURE_NAMES,
    FEATURE_VERSION,
    RISK_PRIOR_RATE,
    RISK_PRIOR_WEIGHT,
    build_features,
    exposure_events,
)
from cluster.schema import validate_frame

T0 = pd.Timestamp("2026-03-02T12:00:00Z")  # a Monday


def tx(rows: list[dict]) -> pd.DataFrame:
    """Canonical frame from short dicts: ``at`` is minutes after T0; ids default to u1/m1."""
    records = []
    for i, row in enumerate(rows):
        row = dict(row)
        minutes = row.pop("at")
        records.append(
            {
                "transaction_id": f"t{i}",
                "user_id": "u1",
                "merchant_id": "m1",
                "amount": 10.0,
                "timestamp": (T0 + pd.Timedelta(minutes=minutes)).isoformat(),
                **row,
            }
        )
    labelled = any("is_fraud" in r for r in records)
    frame = pd.DataFrame(records)
    if labelled:
        frame["is_fraud"] = frame["is_fraud"].fillna(0)
    return validate_frame(frame, labelled=labelled)


def features(rows: list[dict], **kwargs) -> pd.DataFrame:
    kwargs.setdefault("label_delay", timedelta(days=1))
    return build_features(tx(rows), **kwargs)


def test_shape_names_and_dtype() -> None:
    out = features([{"at": 0}, {"at": 1, "user_id": "u2"}])
    assert len(FEATURE_NAMES) >= 40 and len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert list(out.columns) == ["transaction_id", *FEATURE_NAMES]
    assert list(out["transaction_id"]) == ["t0", "t1"]
    assert (out[list(FEATURE_NAMES)].dtypes == np.float32).all()
    assert len(FEATURE_VERSION) == 64


def test_velocity_windows_count_and_sum() -> None:
    out = features(
        [
            {"at": 0, "amount": 5.0},
            {"at": 4, "amount": 7.0},
            {"at": 9, "amount": 9.0},
            {"at": 130, "amount": 1.0},
            {"at": 60 * 24 * 8, "amount": 2.0},
        ]
    )
    assert list(out["user_count_10m"]) == [1, 2, 3, 1, 1]
    assert list(out["user_sum_10m"]) == [5, 12, 21, 1, 2]
    assert list(out["user_count_1h"]) == [1, 2, 3, 1, 1]
    assert list(out["user_count_24h"]) == [1, 2, 3, 4, 1]
    assert list(out["user_count_7d"]) == [1, 2, 3, 4, 1]
    assert list(out["user_count_30d"]) == [1, 2, 3, 4, 5]
    assert out["user_sum_30d"].iloc[-1] == pytest.approx(24.0)


def test_windows_are_per_user_and_ties_keep_input_order() -> None:
    out = features([{"at": 0}, {"at": 0, "user_id": "u2"}, {"at": 0}, {"at": 0}])
    assert list(out["user_count_10m"]) == [1, 1, 2, 3]
    assert list(out["merchant_count_1h"]) == [1, 2, 3, 4]


def test_amount_against_running_mean_and_spread() -> None:
    out = features([{"at": 0, "amount": 10.0}, {"at": 60, "amount": 30.0}, {"at": 120, "amount": 100.0}])
    assert list(out["user_no_history_30d"]) == [1, 0, 0]
    assert list(out["amount_to_user_mean_30d"]) == pytest.approx([1.0, 3.0, 5.0])
    assert out["log_amount_zscore_30d"].iloc[0] == 0
    logs = np.log1p([10.0, 30.0])
    expected = (np.log1p(100.0) - logs.mean()) / logs.std()
    assert out["log_amount_zscore_30d"].iloc[2] == pytest.approx(expected, rel=1e-5)


def test_time_since_previous_and_card_testing() -> None:
    out = features(
        [
            {"at": 0, "amount": 0.5},
            {"at": 1, "amount": 1.0},
            {"at": 2, "amount": 1.5},
            {"at": 3, "amount": 50.0},
            {"at": 20, "amount": 0.9},
        ]
    )
    assert np.expm1(out["log_seconds_since_prev"].iloc[1]) == pytest.approx(60.0, rel=1e-4)
    assert np.expm1(out["log_seconds_since_prev"].iloc[0]) == pytest.approx(30 * 86_400, rel=1e-4)
    assert list(out["user_tiny_count_10m"]) == [1, 2, 3, 3, 1]


def test_distinct_merchants_first_visit_and_new_device() -> None:
    out = features(
        [
            {"at": 0, "merchant_id": "a", "device_id": "d1"},
            {"at": 10, "merchant_id": "b", "device_id": "d1"},
            {"at": 20, "merchant_id": "a", "device_id": "d2"},
            {"at": 90, "merchant_id": "c"},
            {"at": 60 * 24 * 31, "merchant_id": "a", "device_id": "d1"},
        ]
    )
    assert list(out["user_distinct_merchants_1h"]) == [1, 2, 2, 1, 1]  # 1 h before 90 min excludes 0-20
    assert list(out["user_distinct_merchants_24h"]) == [1, 2, 2, 3, 1]
    assert list(out["first_time_at_merchant"]) == [1, 1, 0, 1, 1]  # 31 days later is beyond retention
    assert list(out["new_device"]) == [1, 0, 1, 0, 1]
    assert list(out["device_missing"]) == [0, 0, 0, 1, 0]


def test_device_cards_count_distinct_cards_on_a_device_within_each_window() -> None:
    day = 60 * 24
    out = features(
        [
            {"at": 0, "user_id": "u1", "device_id": "ring"},
            {"at": 5, "user_id": "u2", "device_id": "ring"},
            {"at": 6, "user_id": "u1", "device_id": "ring"},  # a card seen before on the device counts once
            {"at": 7, "user_id": "u3", "device_id": "own"},
            {"at": 8, "user_id": "u3"},  # no device: no count, and it joins no device's history
            {"at": 8 * day, "user_id": "u4", "device_id": "ring"},  # 8 days on: only the 30-day window sees u1, u2
            {"at": 31 * day, "user_id": "u4", "device_id": "ring"},  # beyond retention: u4's use 23 days ago only
        ]
    )
    assert list(out["device_cards_7d"]) == [1, 2, 2, 1, 0, 1, 1]
    assert list(out["device_cards_30d"]) == [1, 2, 2, 1, 0, 3, 1]


def test_device_cards_stop_at_the_device_history_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster.features, "DEVICE_HISTORY_CAP", 2)
    out = features([{"at": i, "user_id": f"u{i}", "device_id": "kiosk"} for i in range(5)])
    assert list(out["device_cards_30d"]) == [1, 2, 3, 3, 3]  # this use and the two before it


def test_geography_previous_location_speed_and_country() -> None:
    out = features(
        [
            {"at": 0, "lat": 40.0, "lon": -74.0, "country": "US"},
            {"at": 30, "country": "US"},
            {"at": 60, "lat": 41.0, "lon": -74.0, "country": "FR"},
        ]
    )
    assert list(out["prev_location_missing"]) == [1, 1, 0]
    assert list(out["location_missing"]) == [0, 1, 0]
    assert out["distance_from_prev_km"].iloc[2] == pytest.approx(111.2, abs=0.2)
    assert out["speed_from_prev_kmh"].iloc[2] == pytest.approx(111.2, abs=0.2)  # one hour apart
    assert list(out["country_changed"]) == [0, 0, 1]


def test_channel_indicators() -> None:
    out = features([{"at": 0, "channel": "online"}, {"at": 1, "channel": "card_present"}, {"at": 2}])
    assert list(out["channel_online"]) == [1, 0, 0]
    assert list(out["channel_card_present"]) == [0, 1, 0]
    assert list(out["channel_mobile"]) == [0, 0, 0]
    assert list(out["channel_missing"]) == [0, 0, 1]


def test_label_changes_merchant_risk_only_after_its_delay() -> None:
    rows = [
        {"at": 0, "is_fraud": 1},
        {"at": 60},
        {"at": 60 * 24 + 1},
        {"at": 60 * 24 * 9},
        {"at": 1, "merchant_id": "m2"},
    ]
    out = features(rows, label_delay=timedelta(days=1))
    prior = RISK_PRIOR_WEIGHT * RISK_PRIOR_RATE
    assert list(out["merchant_fraud_count_7d"]) == [0, 0, 1, 0, 0]
    assert out["merchant_risk_1d"].iloc[1] == pytest.approx(prior / (2 + RISK_PRIOR_WEIGHT))
    assert out["merchant_risk_1d"].iloc[2] == pytest.approx((1 + prior) / (2 + RISK_PRIOR_WEIGHT))
    assert out["merchant_risk_30d"].iloc[2] == pytest.approx((1 + prior) / (3 + RISK_PRIOR_WEIGHT))
    assert out["merchant_risk_30d"].iloc[3] == pytest.approx((1 + prior) / (4 + RISK_PRIOR_WEIGHT))
    assert out["merchant_risk_7d"].iloc[4] == pytest.approx(prior / (1 + RISK_PRIOR_WEIGHT))  # other merchant


def test_explicit_label_events_and_category_risk() -> None:
    rows = [
        {"at": 0, "mcc": "5411"},
        {"at": 10, "merchant_id": "m2", "mcc": "5411"},
        {"at": 20, "mcc": "5411"},
        {"at": 30, "merchant_id": "m3", "mcc": "5812"},
    ]
    labels = pd.DataFrame(
        {"transaction_id": ["t0", "t9"], "is_fraud": [1, 1], "known_at": [T0 + pd.Timedelta(minutes=15), T0]}
    )
    out = features(rows, labels=labels)
    assert list(out["merchant_fraud_count_7d"]) == [0, 0, 1, 0]
    prior = RISK_PRIOR_WEIGHT * RISK_PRIOR_RATE
    assert out["mcc_risk_30d"].iloc[1] == pytest.approx(prior / (2 + RISK_PRIOR_WEIGHT))
    assert out["mcc_risk_30d"].iloc[2] == pytest.approx((1 + prior) / (3 + RISK_PRIOR_WEIGHT))
    assert out["mcc_risk_30d"].iloc[3] == pytest.approx(prior / (1 + RISK_PRIOR_WEIGHT))


DAY = 60 * 24  # minutes


def test_delayed_merchant_risk_counts_transactions_one_label_delay_back() -> None:
    rows = [
        {"at": 0, "is_fraud": 1},
        {"at": 60},
        {"at": 7 * DAY},
        {"at": 8 * DAY},
        {"at": 8 * DAY + 120},
        {"at": 15 * DAY + 30},
        {"at": 8 * DAY, "merchant_id": "m2"},
    ]
    out = features(rows, label_delay=timedelta(days=7))
    # At exactly 7 days the fraud's label is known only now, not before: the window [t - 8d, t - 7d) is empty.
    assert list(out["merchant_delayed_count_1d"]) == [0, 0, 0, 2, 0, 1, 0]
    assert list(out["merchant_delayed_risk_1d"]) == [0, 0, 0, 0.5, 0, 0, 0]  # 8 days ago: 1 fraud in 2
    assert list(out["merchant_delayed_count_7d"]) == [0, 0, 0, 2, 2, 2, 0]
    assert list(out["merchant_delayed_risk_7d"]) == [0, 0, 0, 0.5, 0.5, 0, 0]  # day 15: days 1-8 hold no fraud
    assert list(out["merchant_delayed_count_30d"]) == [0, 0, 0, 2, 2, 4, 0]
    assert list(out["merchant_delayed_risk_30d"]) == [0, 0, 0, 0.5, 0.5, 0.25, 0]


def test_delayed_merchant_risk_counts_a_late_label_only_from_its_anchor() -> None:
    rows = [{"at": 0}, {"at": 1}, {"at": 9 * DAY}, {"at": 10 * DAY}, {"at": 10 * DAY + 1}]
    late = T0 + pd.Timedelta(days=10)  # 3 days later than the 7-day delay: anchored at day 3
    early = T0 + pd.Timedelta(hours=1)  # an analyst's quick verdict: anchored at its transaction
    labels = pd.DataFrame({"transaction_id": ["t0", "t1"], "is_fraud": [1, 1], "known_at": [late, early]})
    out = features(rows, labels=labels, label_delay=timedelta(days=7))
    assert list(out["merchant_delayed_count_30d"]) == [0, 0, 2, 2, 2]
    assert list(out["merchant_delayed_risk_30d"]) == [0, 0, 0.5, 0.5, 1.0]  # t0 counts once known, after day 10
    assert list(out["merchant_delayed_risk_1d"]) == [0, 0, 0, 0, 0]  # [day 3, day 3 + 1 min) holds no transaction
    assert list(out["merchant_fraud_count_7d"]) == [0, 0, 0, 0, 1]  # the undelayed count: known in the last 7 days


def test_missing_optional_inputs_give_indicators_never_nan() -> None:
    frame = pd.DataFrame(
        {
            "transaction_id": ["a", "b"],
            "user_id": ["u", "u"],
            "merchant_id": ["m", "m"],
            "amount": [1.0, 2.0],
            "timestamp": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True),
        }
    )
    out = build_features(frame, label_delay=timedelta(days=7))
    values = out[list(FEATURE_NAMES)]
    assert not values.isna().any().any() and np.isfinite(values.to_numpy()).all()
    for indicator in (
        "device_missing",
        "home_distance_missing",
        "prev_location_missing",
        "location_missing",
        "country_missing",
        "channel_missing",
        "mcc_missing",
        "user_profile_missing",
        "merchant_profile_missing",
    ):
        assert list(out[indicator]) == [1, 1], indicator
    assert list(out["account_age_days"]) == [365, 365]
    assert list(out["amount_to_merchant_typical"]) == [1, 1]


def test_enrichment_from_profiles() -> None:
    users = pd.DataFrame(
        {
            "user_id": ["u1"],
            "home_lat": [40.0],
            "home_lon": [-74.0],
            "home_country": ["US"],
            "account_opened": [T0 - pd.Timedelta(days=100)],
            "credit_limit": [1000.0],
            "kyc_level": [2],
            "segment": ["mass_market"],
        }
    )
    merchants = pd.DataFrame(
        {
            "merchant_id": ["m1"],
            "mcc": ["5812"],
            "lat": [40.0],
            "lon": [-74.0],
            "country": ["US"],
            "typical_ticket": [20.0],
        }
    )
    out = features(
        [
            {"at": 0, "amount": 100.0, "lat": 41.0, "lon": -74.0, "country": "FR"},
            {"at": 60, "amount": 150.0, "user_id": "u9", "merchant_id": "m9"},
        ],
        users=users,
        merchants=merchants,
    )
    assert list(out["user_profile_missing"]) == [0, 1]
    assert list(out["merchant_profile_missing"]) == [0, 1]
    assert out["account_age_days"].iloc[0] == pytest.approx(100.0)
    assert out["credit_utilisation_30d"].iloc[0] == pytest.approx(0.1)
    assert list(out["kyc_level"]) == [2, 0]
    assert out["distance_from_home_km"].iloc[0] == pytest.approx(111.2, abs=0.2)
    assert list(out["country_differs_from_home"]) == [1, 0]
    assert out["amount_to_merchant_typical"].iloc[0] == pytest.approx(5.0)
    assert list(out["mcc_missing"]) == [0, 1]  # the category comes from the merchant profile


def test_time_features() -> None:
    out = features([{"at": 0}, {"at": 60 * 14}, {"at": 60 * 24 * 5}])  # Monday 12:00, Tuesday 02:00, Saturday
    assert list(out["hour_of_day"]) == [12, 2, 12]
    assert list(out["is_night"]) == [0, 1, 0]
    assert list(out["is_weekend"]) == [0, 0, 1]
    assert out["log_amount"].iloc[0] == pytest.approx(np.log1p(10.0))


def test_bad_input_names_the_field() -> None:
    with pytest.raises(ValueError, match="merchant_id"):
        build_features(
            pd.DataFrame({"transaction_id": ["a"], "user_id": ["u"], "amount": [1.0], "timestamp": [T0]}),
            label_delay=timedelta(days=1),
        )
    with pytest.raises(ValueError, match="known_at"):
        features([{"at": 0}], labels=pd.DataFrame({"transaction_id": ["t0"], "is_fraud": [1]}))


@pytest.mark.parametrize("recurring", [True, False])
def test_key_hashes_agree_for_micro_batches_and_whole_tables(recurring: bool) -> None:
    from cluster.features import SMALL_BATCH, stable_hash

    values = np.array(["t1", None, "abc", np.nan, "t1", 5], dtype=object)
    table = pd.Series([*values, *(f"x{i}" for i in range(SMALL_BATCH))], dtype=object)
    small = stable_hash(values, recurring=recurring)
    assert small.tolist() == stable_hash(table, recurring=recurring)[: len(values)].tolist()
    assert small[1] == small[3] == 0 and small[0] == small[4] != 0


def _features_module_with(old: str, new: str) -> ModuleType:
    """``cluster/features.py`` loaded afresh as a module of its own, with one text replacement."""
    source = Path(cluster.features.__file__).read_text()
    assert old in source
    spec = importlib.util.spec_from_loader("features_edited", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source.replace(old, new, 1), "features_edited.py", "exec"), module.__dict__)  # noqa: S102
    return module


def test_feature_version_follows_the_declared_spec_not_the_file_bytes() -> None:
    commented = _features_module_with("MINUTE_MS = 60_000\n", "MINUTE_MS = 60_000  # a comment changes nothing\n")
    assert commented.FEATURE_VERSION == FEATURE_VERSION
    reworded = _features_module_with('"Weekend purchase"', '"A purchase on a weekend"')
    assert reworded.FEATURE_VERSION == FEATURE_VERSION
    wider = _features_module_with('"10m": 10 * MINUTE_MS', '"10m": 15 * MINUTE_MS')
    assert wider.FEATURE_VERSION != FEATURE_VERSION
    bumped = _features_module_with('FEATURE_SPEC_VERSION = "4"', 'FEATURE_SPEC_VERSION = "5"')
    assert bumped.FEATURE_VERSION != FEATURE_VERSION


def test_card_state_counts_the_cards_known_frauds_only_after_their_delay() -> None:
    hour, day = 60, 24 * 60
    out = features(
        [
            {"at": 0, "is_fraud": 1},
            {"at": hour},
            {"at": day + hour},
            {"at": day + hour, "user_id": "u2"},
            {"at": day + 3 * hour, "is_fraud": 1},
            {"at": 2 * day + 4 * hour},
            {"at": 33 * day},
        ],
        label_delay=timedelta(days=1),
    )
    # t0 is known at day 0 + 24 h, t4 at day 2 + 3 h; u2 never had a fraud; by day 33 both left the 30-day window
    assert list(out["card_fraud_known_30d"]) == [0, 0, 1, 0, 1, 2, 0]
    hours = np.expm1(out["log_hours_since_card_fraud"].to_numpy(np.float64))
    assert hours[2] == pytest.approx(1.0, rel=1e-4) and hours[4] == pytest.approx(3.0, rel=1e-4)
    assert hours[5] == pytest.approx(1.0, rel=1e-4)  # the latest known fraud, not the first
    assert hours[0] == hours[1] == hours[3] == hours[6] == pytest.approx(30 * 24)  # none known: the neutral lookback
    explicit = features(
        [{"at": 0}, {"at": 2 * hour}],
        labels=pd.DataFrame({"transaction_id": ["t0"], "is_fraud": [1], "known_at": [T0 + pd.Timedelta(hours=1)]}),
    )
    assert list(explicit["card_fraud_known_30d"]) == [0, 1]  # an analyst's early verdict counts when known
    unlabelled = features([{"at": 0}, {"at": 2 * day}])
    assert list(unlabelled["card_fraud_known_30d"]) == [0, 0]


def test_compromise_point_counts_a_cards_earlier_purchases_once_its_fraud_is_known() -> None:
    rows = [
        {"at": 0},
        {"at": 10, "user_id": "u2"},
        {"at": 20, "user_id": "u3"},  # three cards at m1
        {"at": DAY, "merchant_id": "m2", "is_fraud": 1},  # u1's fraud elsewhere, known day 3
        {"at": 2 * DAY, "merchant_id": "m3"},  # u1 after its fraud: not suspect
        {"at": 2 * DAY + 10, "user_id": "u4"},  # fraud not known yet
        {"at": 3 * DAY + 1, "user_id": "u5"},
        {"at": 3 * DAY + 2, "user_id": "u6", "merchant_id": "m2"},
        {"at": 3 * DAY + 3, "user_id": "u7", "merchant_id": "m3"},
        {"at": 11 * DAY, "user_id": "u8"},
    ]
    out = features(rows, label_delay=timedelta(days=2))
    assert list(out["merchant_compromise_count_7d"]) == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0]
    # delayed 7-day window of row 6: [day -6, day 1) holds m1's three purchases, u1's among them
    assert out["merchant_compromise_share_7d"].iloc[6] == pytest.approx(1 / 3)
    assert out["merchant_compromise_share_7d"].iloc[7] == pytest.approx(1.0)  # the fraud itself, at m2
    assert out["merchant_compromise_share_7d"].iloc[9] == 0  # [day 2, day 9): no suspect purchase
    assert out["merchant_compromise_share_30d"].iloc[9] == pytest.approx(1 / 5)  # [day -21, day 9): 1 of 5
    assert out["merchant_compromise_share_30d"].iloc[:6].sum() == 0
    labels = pd.DataFrame(
        {"transaction_id": ["t3"], "is_fraud": [1], "known_at": [T0 + pd.Timedelta(days=2, minutes=5)]}
    )
    early = features(rows, labels=labels, label_delay=timedelta(days=2))  # an analyst's verdict before the delay
    assert list(early["merchant_compromise_count_7d"]) == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0]
    # anchored at day 0 + 5 min (known - delay): row 5's window [day -7 + 10 min, 10 min) holds u1's purchase alone
    assert early["merchant_compromise_share_7d"].iloc[5] == pytest.approx(1.0)


def test_exposure_events_take_each_purchase_once_within_the_lookback_before_the_fraud() -> None:
    day = DAY_MS
    visits = {
        "merchant_key": np.array([11, 12, 13, 11, 14]),
        "user_key": np.array([1, 1, 1, 2, 1]),
        "ts_ms": np.array([-28 * day, -26 * day, 0, 0, 2 * day]),
        "txn_key": np.array([101, 102, 103, 104, 105]),
    }
    frauds = {
        "user_key": np.array([1, 1, 3]),
        "ts_ms": np.array([day, day + 1, 0]),
        "known_ms": np.array([3 * day, 4 * day, day]),
    }
    events = exposure_events(frauds, visits, label_delay_ms=2 * day)
    # known at day 3: purchases after day -27 up to the fraud at day 1; the second fraud repeats them later
    assert list(events["txn_key"]) == [102, 103]
    assert list(events["key"]) == [12, 13] and list(events["known_ms"]) == [3 * day, 3 * day]
    assert list(events["anchor_ms"]) == [day, day]  # max(purchase, known - delay)
