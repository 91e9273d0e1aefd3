"""Offline feature builder: the ``cluster.features`` passes over Ray Data, for training and backtests.

Each row gets its arrival position (``row_seq``) and becomes slim numeric Arrow columns (hashed keys, epoch ms,
ids as strings). Three keyed hash shuffles then follow: by merchant, by merchant category and by user. Each
``repartition(keys=...)`` output block holds every row of its keys (what ``groupby().map_groups`` relies on), so
one vectorised pass per block sees each key whole and, after sorting by ``row_seq``, in arrival order; labels
are revealed only ``label_delay`` after their transaction (or at their explicit ``known_at``). Profiles join at
the last step, by id, so the shuffles carry neither profiles nor pickled objects.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cluster.config import Settings
from cluster.features import (FEATURE_NAMES, align_profiles, assemble, default_label_events, event_rows,
                              explicit_label_events, label_keys, mcc_pass, merchant_pass, prepare_rows, user_pass)
from cluster.profiles import MERCHANT_PROFILE_COLUMNS, USER_PROFILE_COLUMNS
from cluster.schema import validate_frame

_ROW_ID = "_row_id"
ARRIVAL_SEQ = "arrival_seq"
READ_BLOCK_ROWS = 125_000
_PASSES = {"merchant": (merchant_pass, "merchant_key", "merchant_pass__"), "mcc": (mcc_pass, "mcc_key", "mcc_pass__")}


def read_transactions_dataset(paths: str | Path | list[str | Path]) -> Any:
    """Canonical transactions from CSV or Parquet files as a Ray Dataset, validated per block.

    ``arrival_seq`` is each row's position in the files, numbered inside the read tasks (before any split), so
    time ties keep file order. The read is then split into ``READ_BLOCK_ROWS`` blocks: a single large file
    would otherwise be validated and prepared by one task on one core.
    """
    import ray
    from ray.data.expressions import monotonically_increasing_id

    paths = [str(p) for p in (paths if isinstance(paths, list) else [paths])]
    suffixes = {Path(p).suffix.lower() for p in paths}
    if suffixes == {".csv"}:
        dataset = ray.data.read_csv(paths)
    elif suffixes == {".parquet"}:
        dataset = ray.data.read_parquet(paths)
    else:
        raise ValueError(f"paths must all be .csv or all .parquet, got {sorted(suffixes)}")
    numbered = dataset.with_column(ARRIVAL_SEQ, monotonically_increasing_id())
    return numbered.repartition(target_num_rows_per_block=READ_BLOCK_ROWS).map_batches(
        _validate, batch_format="pandas", batch_size=None)


def _validate(batch: pd.DataFrame) -> pd.DataFrame:
    valid = validate_frame(batch, labelled=False)
    valid[ARRIVAL_SEQ] = batch[ARRIVAL_SEQ].to_numpy(np.int64)
    return valid


def _prepare(batch: pd.DataFrame, users: pd.DataFrame | None, merchants: pd.DataFrame | None) -> pd.DataFrame:
    """Numeric rows plus the ids the last step needs; ``arrival_seq`` (Kinesis, files) wins over the position id."""
    batch = batch.reset_index(drop=True)
    user_profiles = align_profiles(batch["user_id"], users, "user_id", USER_PROFILE_COLUMNS)
    merchant_profiles = align_profiles(batch["merchant_id"], merchants, "merchant_id", MERCHANT_PROFILE_COLUMNS)
    rows = prepare_rows(batch, user_profiles, merchant_profiles)
    rows["row_seq"] = batch[ARRIVAL_SEQ if ARRIVAL_SEQ in batch.columns else _ROW_ID].to_numpy(np.int64)
    rows["is_fraud"] = (pd.to_numeric(batch["is_fraud"], errors="coerce").fillna(0).to_numpy(np.int8)
                        if "is_fraud" in batch.columns else np.zeros(len(batch), np.int8))
    for column in ("transaction_id", "user_id", "merchant_id"):
        rows[column] = batch[column].astype("string").to_numpy(dtype=object)
    return rows


def _in_arrival_order(block: pd.DataFrame) -> pd.DataFrame:
    return block.sort_values("row_seq", kind="stable").reset_index(drop=True)


def _event_pass(block: pd.DataFrame, kind: str, label_delay_ms: int, events: pd.DataFrame | None) -> pd.DataFrame:
    """Merchant or category counts and known-fraud counts for one hash partition of that key."""
    rows = _in_arrival_order(block)
    compute, key, prefix = _PASSES[kind]
    if events is None:
        events = default_label_events(rows, rows["is_fraud"].to_numpy(), timedelta(milliseconds=label_delay_ms))
    keyed = event_rows(rows, key)
    passed = compute(keyed.iloc[:0], keyed, label_keys(events, rows, key, label_delay_ms), label_delay_ms)
    return pd.concat([rows, passed.add_prefix(prefix)], axis=1)


def _user_pass_and_assemble(block: pd.DataFrame, users: pd.DataFrame | None,
                            merchants: pd.DataFrame | None) -> pd.DataFrame:
    """The user pass for one hash partition of users, then every feature with the profiles joined by id."""
    rows = _in_arrival_order(block)
    user_profiles = align_profiles(rows["user_id"], users, "user_id", USER_PROFILE_COLUMNS)
    merchant_profiles = align_profiles(rows["merchant_id"], merchants, "merchant_id", MERCHANT_PROFILE_COLUMNS)
    passes = {kind: rows[[c for c in rows.columns if c.startswith(prefix)]].rename(
        columns=lambda c, p=prefix: c[len(p):]) for kind, (_, _, prefix) in _PASSES.items()}
    features = assemble(rows, user_pass(rows.iloc[:0], rows), passes["merchant"], passes["mcc"],
                        user_profiles, merchant_profiles)
    features.insert(0, "row_seq", rows["row_seq"].to_numpy(np.int64))
    features.insert(0, "transaction_id", rows["transaction_id"].to_numpy(dtype=object))
    return features


def build_offline_features(dataset: Any, *, label_delay: timedelta, labels: pd.DataFrame | None = None,
                           users: pd.DataFrame | None = None, merchants: pd.DataFrame | None = None,
                           partitions: int = 2) -> Any:
    """A Dataset of ``transaction_id, row_seq`` + ``FEATURE_NAMES``, one row per input row (any order).

    Arrival order (which breaks time ties) is the dataset's ``arrival_seq`` column when it has one (the Kinesis
    datasource provides it), else the dataset order (``monotonically_increasing_id`` follows the read tasks);
    see ``cluster.features.build_features`` for ``labels``/``users``/``merchants``. ``collect_features``
    restores order. ``partitions`` is the number of hash partitions per shuffle.
    """
    from ray.data.expressions import monotonically_increasing_id

    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    events = explicit_label_events(labels) if labels is not None else None
    delay_ms = int(label_delay / timedelta(milliseconds=1))
    rows = dataset.with_column(_ROW_ID, monotonically_increasing_id()).map_batches(
        _prepare, batch_format="pandas", batch_size=None, fn_kwargs={"users": users, "merchants": merchants})
    for kind in _PASSES:
        rows = rows.repartition(partitions, keys=[_PASSES[kind][1]]).map_batches(
            _event_pass, batch_format="pandas", batch_size=None,
            fn_kwargs={"kind": kind, "label_delay_ms": delay_ms, "events": events})
    return rows.repartition(partitions, keys=["user_key"]).map_batches(
        _user_pass_and_assemble, batch_format="pandas", batch_size=None,
        fn_kwargs={"users": users, "merchants": merchants})


def collect_features(features: Any) -> pd.DataFrame:
    """The builder's output as one frame in input order: ``transaction_id`` + ``FEATURE_NAMES``."""
    frame = features.to_pandas().sort_values("row_seq", kind="stable").reset_index(drop=True)
    out = frame[list(FEATURE_NAMES)].astype(np.float32)
    out.insert(0, "transaction_id", frame["transaction_id"].astype("string").to_numpy(dtype=object))
    return out


def bench_features_offline(settings: Settings, rows: int = 500_000) -> dict[str, Any]:
    """Offline feature rows/s on ``rows`` synthetic transactions: pure pandas core and through Ray Data."""
    import tempfile

    from cluster.runtime import ray_runtime

    transactions = synthetic_transactions(rows, users=max(rows // 20, 1), merchants=max(rows // 250, 1))
    from cluster.features import build_features

    started = time.perf_counter()
    build_features(transactions, label_delay=timedelta(days=settings.label_delay_days))
    core_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder, ray_runtime(settings):
        path = Path(folder) / "transactions.parquet"
        transactions.to_parquet(path, index=False)
        started = time.perf_counter()
        built = collect_features(build_offline_features(read_transactions_dataset(path),
                                                        label_delay=timedelta(days=settings.label_delay_days)))
        ray_seconds = time.perf_counter() - started
    return {"rows": rows, "core_rows_per_s": round(rows / core_seconds), "core_seconds": round(core_seconds, 2),
            "ray_data_rows_per_s": round(len(built) / ray_seconds), "ray_data_seconds": round(ray_seconds, 2),
            "features": len(FEATURE_NAMES), "goal_rows_per_s": 50_000}


def synthetic_transactions(rows: int, *, users: int, merchants: int, days: int = 30, seed: int = 7) -> pd.DataFrame:
    """A quick canonical frame with every optional field, for benchmarks (the simulator makes realistic ones)."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, rows)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    offsets = np.sort(rng.integers(0, days * 86_400_000, rows))
    return pd.DataFrame({
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
        "lat": rng.uniform(30, 45, rows), "lon": rng.uniform(-110, -80, rows),
        "is_fraud": (rng.random(rows) < 0.005).astype(np.int8),
    })
