"""The feature sections of ``fraudctl bench``: the offline builder and the online state actors."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cluster.config import Settings
from cluster.feature_state import OnlineFeatures
from cluster.features import FEATURE_NAMES, build_features
from cluster.offline_features import build_offline_features, collect_features, read_transactions_dataset
from cluster.runtime import aws_endpoint, ray_runtime


def bench_features_online(settings: Settings, rows: int = 200_000, batch_rows: int = 5_000) -> dict[str, Any]:
    """Transactions/s through the state actors in micro-batches, and state memory per 100,000 users."""
    users = 100_000
    transactions = synthetic_transactions(rows, users=users, merchants=max(rows // 250, 1))
    with aws_endpoint(settings.model_copy(update={"aws_mode": "embedded", "aws_endpoint_url": None})) as live:
        with ray_runtime(live):
            online = OnlineFeatures(live, name="bench", restore=False)
            try:
                online.compute(transactions.iloc[:batch_rows])  # actors up
                started = time.perf_counter()
                online.user_store.get_many(transactions["user_id"].unique())  # steady state: the TTL cache is warm
                online.merchant_store.get_many(transactions["merchant_id"].unique())
                warm_seconds = time.perf_counter() - started
                started = time.perf_counter()
                for start in range(batch_rows, rows, batch_rows):
                    online.compute(transactions.iloc[start : start + batch_rows])
                seconds = time.perf_counter() - started
                stats = online.stats()
            finally:
                online.shutdown()
    user_state = stats["user"]
    return {
        "transactions": rows - batch_rows,
        "batch_rows": batch_rows,
        "seconds": round(seconds, 2),
        "tx_per_s": round((rows - batch_rows) / seconds),
        "goal_tx_per_s": 20_000,
        "profile_cache_warmup_seconds": round(warm_seconds, 2),
        "user_keys": user_state["keys"],
        "user_state_rows": user_state["rows"],
        "user_state_mb_per_100k_users": round(user_state["bytes"] / user_state["keys"] * 100_000 / 2**20, 1),
        "note": f"{rows / users:.1f} transactions per user retained; profiles from a warm ProfileStore cache (cold keys cost one BatchGetItem per 100 users, timed apart)",
    }


def bench_features_offline(settings: Settings, rows: int = 500_000) -> dict[str, Any]:
    """Offline feature rows/s on ``rows`` synthetic transactions: the pandas core alone, and the Ray builder end to
    end (Parquet read, validation, passes, assembly, collected in input order), twice on a fresh Ray: the first
    build also starts the workers and imports the feature code in them (once per cluster), the second is the
    builder's own throughput.
    """
    transactions = synthetic_transactions(rows, users=max(rows // 20, 1), merchants=max(rows // 250, 1))
    label_delay = settings.label_delay
    started = time.perf_counter()
    build_features(transactions, label_delay=label_delay)
    core_seconds = time.perf_counter() - started
    seconds = []
    with tempfile.TemporaryDirectory() as folder, ray_runtime(settings):
        path = Path(folder) / "transactions.parquet"
        transactions.to_parquet(path, index=False)
        for _ in range(2):
            started = time.perf_counter()
            built = collect_features(build_offline_features(read_transactions_dataset(path), label_delay=label_delay))
            seconds.append(time.perf_counter() - started)
    cold_seconds, ray_seconds = seconds
    return {
        "rows": rows,
        "core_rows_per_s": round(rows / core_seconds),
        "core_seconds": round(core_seconds, 2),
        "ray_data_rows_per_s": round(len(built) / ray_seconds),
        "ray_data_seconds": round(ray_seconds, 2),
        "ray_data_cold_rows_per_s": round(len(built) / cold_seconds),
        "ray_data_cold_seconds": round(cold_seconds, 2),
        "features": len(FEATURE_NAMES),
        "goal_rows_per_s": 50_000,
    }


def synthetic_transactions(rows: int, *, users: int, merchants: int, days: int = 30, seed: int = 7) -> pd.DataFrame:
    """A quick canonical frame with every optional field, for benchmarks (the simulator makes realistic ones)."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, rows)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    offsets = np.sort(rng.integers(0, days * 86_400_000, rows))
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(rows)],
            "user_id": pd.Series(user).map(lambda u: f"u{u}").to_numpy(),
            "merchant_id": pd.Series(rng.integers(0, merchants, rows)).map(lambda m: f"m{m}").to_numpy(),
            "amount": np.round(rng.lognormal(3.5, 1.0, rows), 2),
            "timestamp": start + pd.to_timedelta(offsets, unit="ms"),
            "currency": "USD",
            "device_id": pd.Series(user * 2 + rng.integers(0, 2, rows)).map(lambda d: f"d{d}").to_numpy(),
            "channel": rng.choice(["card_present", "online", "mobile"], rows),
            "mcc": rng.choice(["5411", "5812", "5999", "4111"], rows),
            "country": rng.choice(["US", "US", "US", "CA"], rows),
            "lat": rng.uniform(30, 45, rows),
            "lon": rng.uniform(-110, -80, rows),
            "is_fraud": (rng.random(rows) < 0.005).astype(np.int8),
        }
    )
