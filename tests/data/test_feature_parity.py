"""One simulated sequence through the online state actors and the offline Ray Data builder: identical features."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from cluster.aws import client
from cluster.config import Settings
from cluster.features import FEATURE_NAMES, build_features
from cluster.profiles import MERCHANT_PROFILE_COLUMNS, USER_PROFILE_COLUMNS, ProfileStore, put_profiles, scan_profiles

LABEL_DELAY = timedelta(days=3)
BATCH_ROWS = 2_500


def _table(settings: Settings, name: str, key: str) -> str:
    dynamodb = client("dynamodb", settings)
    dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return name


@pytest.fixture(scope="module")
def history():
    from simulation.generator import SimulationConfig, simulate_history

    simulated = simulate_history(SimulationConfig(n_users=800, days=28, seed=11))
    assert len(simulated.transactions) >= 50_000
    return simulated


def test_online_and_offline_features_are_identical(ray_session: Settings, history) -> None:
    import ray

    from cluster.feature_state import OnlineFeatures
    from cluster.offline_features import build_offline_features, collect_features

    settings = ray_session.model_copy(update={"label_delay_days": LABEL_DELAY.days})  # the actors' delayed windows
    user_table = _table(settings, "parity-user-profiles", "user_id")
    merchant_table = _table(settings, "parity-merchant-profiles", "merchant_id")
    put_profiles(user_table, history.users[list(USER_PROFILE_COLUMNS)], settings)
    put_profiles(merchant_table, history.merchants[list(MERCHANT_PROFILE_COLUMNS)], settings)
    transactions = history.transactions.reset_index(drop=True)
    labels = pd.DataFrame(
        {
            "transaction_id": transactions["transaction_id"],
            "is_fraud": transactions["is_fraud"],
            "known_at": transactions["timestamp"] + LABEL_DELAY,
            "merchant_id": transactions["merchant_id"],
            "user_id": transactions["user_id"],
        }
    )
    labels = labels[labels["is_fraud"] == 1]

    online = OnlineFeatures(
        settings,
        name="parity",
        restore=False,
        user_store=ProfileStore(user_table, "user_id", settings),
        merchant_store=ProfileStore(merchant_table, "merchant_id", settings),
    )
    try:
        parts, recorded = [], 0
        for start in range(0, len(transactions), BATCH_ROWS):
            batch = transactions.iloc[start : start + BATCH_ROWS]
            due = labels[(labels["known_at"] <= batch["timestamp"].max())].iloc[recorded:]
            recorded += len(due)
            # odd batches name only the transaction (merchant and card resolved from the state), even ones name both
            online.record_labels(due.drop(columns=["merchant_id", "user_id"]) if start % 2 else due)
            parts.append(online.compute(batch))
        stats = online.stats()
    finally:
        online.shutdown()
    streamed = pd.concat(parts, ignore_index=True)
    assert stats["user"]["keys"] == transactions["user_id"].nunique()

    users = scan_profiles(user_table, USER_PROFILE_COLUMNS, settings)
    merchants = scan_profiles(merchant_table, MERCHANT_PROFILE_COLUMNS, settings)
    built = collect_features(
        build_offline_features(
            ray.data.from_pandas(transactions), label_delay=LABEL_DELAY, users=users, merchants=merchants, partitions=2
        )
    )
    pure = build_features(transactions, label_delay=LABEL_DELAY, users=users, merchants=merchants)

    assert list(streamed["transaction_id"]) == list(transactions["transaction_id"]) == list(built["transaction_id"])
    for name in FEATURE_NAMES:
        np.testing.assert_allclose(streamed[name], built[name], rtol=1e-5, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(pure[name], built[name], rtol=1e-5, atol=1e-4, err_msg=name)
    # The sequence exercises the families being compared, not just their neutral values.
    assert built["merchant_fraud_count_7d"].max() > 0
    assert built["merchant_delayed_risk_7d"].max() > 0
    assert built["user_profile_missing"].max() == 0
    assert built["distance_from_prev_km"].max() > 0
    assert built["new_device"].sum() > 0
    assert built["card_fraud_known_30d"].max() > 0  # card state from label feedback (resolved or named)
    assert built["log_hours_since_card_fraud"].min() < np.log1p(30 * 24) - 0.01  # a known fraud's recency, not neutral
    # compromise point: card frauds followed to every partition's merchants, and shares of settled windows
    assert built["merchant_compromise_count_7d"].max() > built["merchant_fraud_count_7d"].max()
    assert built["merchant_compromise_share_30d"].max() > 0
