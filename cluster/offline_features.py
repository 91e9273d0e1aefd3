"""Offline feature builder: the ``cluster.features`` passes over Ray Data, for training and backtests.

Rows get their arrival position (``row_seq``), then one user-keyed pass and two event-keyed passes (merchant,
merchant category) run per hash partition with ``groupby(...).map_groups``: each call is one vectorised pass over
a whole partition, with rows in arrival order, so every key is processed in time order and each label is revealed
only ``label_delay`` after its transaction (or at its explicit ``known_at``).
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cluster.config import Settings
from cluster.features import (FEATURE_NAMES, USER_PASS_OUTPUTS, align_profiles, assemble, default_label_events,
                              event_rows, explicit_label_events, label_keys, mcc_pass, merchant_pass, partition_of,
                              prepare_rows, user_pass)
from cluster.profiles import MERCHANT_PROFILE_COLUMNS, USER_PROFILE_COLUMNS
from cluster.schema import validate_frame

USER_PREFIX, MERCHANT_PREFIX = "user_profile__", "merchant_profile__"
_PASS_PREFIX = {"merchant": "merchant_pass__", "mcc": "mcc_pass__"}


def read_transactions_dataset(paths: str | Path | list[str | Path]) -> Any:
    """Canonical transactions from CSV or Parquet files as a Ray Dataset (validated per block)."""
    import ray

    paths = [str(p) for p in (paths if isinstance(paths, list) else [paths])]
    suffixes = {Path(p).suffix.lower() for p in paths}
    if suffixes == {".csv"}:
        dataset = ray.data.read_csv(paths)
    elif suffixes == {".parquet"}:
        dataset = ray.data.read_parquet(paths)
    else:
        raise ValueError(f"paths must all be .csv or all .parquet, got {sorted(suffixes)}")
    return dataset.map_batches(_validate, batch_format="pandas", batch_size=None)


def _validate(batch: pd.DataFrame) -> pd.DataFrame:
    return validate_frame(batch, labelled=False)


def _prepare(batch: pd.DataFrame, users: pd.DataFrame | None, merchants: pd.DataFrame | None,
             partitions: int) -> pd.DataFrame:
    batch = batch.reset_index(drop=True)
    user_profiles = align_profiles(batch["user_id"], users, "user_id", USER_PROFILE_COLUMNS)
    merchant_profiles = align_profiles(batch["merchant_id"], merchants, "merchant_id", MERCHANT_PROFILE_COLUMNS)
    rows = prepare_rows(batch, user_profiles, merchant_profiles)
    rows["row_seq"] = batch["row_seq"].to_numpy(np.int64)
    rows["transaction_id"] = batch["transaction_id"].astype("string").to_numpy(dtype=object)
    rows["is_fraud"] = (pd.to_numeric(batch["is_fraud"], errors="coerce").fillna(0).to_numpy(np.int8)
                        if "is_fraud" in batch.columns else np.zeros(len(batch), np.int8))
    for kind in ("user", "merchant", "mcc"):
        rows[f"{kind}_partition"] = partition_of(rows[f"{kind}_key"].to_numpy(np.int64), partitions)
    for column in USER_PROFILE_COLUMNS:
        rows[USER_PREFIX + column] = user_profiles[column].to_numpy()
    for column in MERCHANT_PROFILE_COLUMNS:
        rows[MERCHANT_PREFIX + column] = merchant_profiles[column].to_numpy()
    return rows


def _in_arrival_order(group: pd.DataFrame) -> pd.DataFrame:
    return group.sort_values("row_seq", kind="stable").reset_index(drop=True)


def _user_group(group: pd.DataFrame) -> pd.DataFrame:
    group = _in_arrival_order(group)
    features = user_pass(group.iloc[:0], group)
    return pd.concat([group, features], axis=1)


def _event_group(group: pd.DataFrame, kind: str, label_delay_ms: int, events: pd.DataFrame | None) -> pd.DataFrame:
    group = _in_arrival_order(group)
    key = f"{kind}_key"
    if events is None:
        events = default_label_events(group, group["is_fraud"].to_numpy(), timedelta(milliseconds=label_delay_ms))
    rows = event_rows(group, key)
    passed = (merchant_pass if kind == "merchant" else mcc_pass)(rows.iloc[:0], rows, label_keys(events, group, key))
    return pd.concat([group, passed.add_prefix(_PASS_PREFIX[kind])], axis=1)


def _assemble(batch: pd.DataFrame) -> pd.DataFrame:
    batch = batch.reset_index(drop=True)
    users = pd.DataFrame({c: batch[USER_PREFIX + c] for c in USER_PROFILE_COLUMNS})
    merchants = pd.DataFrame({c: batch[MERCHANT_PREFIX + c] for c in MERCHANT_PROFILE_COLUMNS})
    passes = {kind: batch[[c for c in batch.columns if c.startswith(prefix)]].rename(
        columns=lambda c, p=prefix: c[len(p):]) for kind, prefix in _PASS_PREFIX.items()}
    features = assemble(batch, batch[list(USER_PASS_OUTPUTS)], passes["merchant"], passes["mcc"], users, merchants)
    features.insert(0, "row_seq", batch["row_seq"].to_numpy(np.int64))
    features.insert(0, "transaction_id", batch["transaction_id"].to_numpy(dtype=object))
    return features


def build_offline_features(dataset: Any, *, label_delay: timedelta, labels: pd.DataFrame | None = None,
                           users: pd.DataFrame | None = None, merchants: pd.DataFrame | None = None,
                           partitions: int = 4) -> Any:
    """A Dataset of ``transaction_id, row_seq`` + ``FEATURE_NAMES``, one row per input row (any order).

    Arrival order (which breaks time ties) is the dataset's ``arrival_seq`` column when it has one (the Kinesis
    datasource provides it), else the row position (files read in a deterministic order); see
    ``cluster.features.build_features`` for ``labels``/``users``/``merchants``. ``collect_features`` restores order.
    """
    import ray

    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    if "arrival_seq" in dataset.schema().names:
        ordered = dataset.rename_columns({"arrival_seq": "row_seq"})
    else:
        ordered = dataset.zip(ray.data.range(dataset.count())).rename_columns({"id": "row_seq"})
    events = explicit_label_events(labels) if labels is not None else None
    delay_ms = int(label_delay / timedelta(milliseconds=1))
    prepared = ordered.map_batches(_prepare, batch_format="pandas", batch_size=None,
                                   fn_kwargs={"users": users, "merchants": merchants, "partitions": partitions})
    with_user = prepared.groupby("user_partition", num_partitions=partitions).map_groups(_user_group, batch_format="pandas")
    with_merchant = with_user.groupby("merchant_partition", num_partitions=partitions).map_groups(
        _event_group, batch_format="pandas", fn_kwargs={"kind": "merchant", "label_delay_ms": delay_ms, "events": events})
    with_mcc = with_merchant.groupby("mcc_partition", num_partitions=partitions).map_groups(
        _event_group, batch_format="pandas", fn_kwargs={"kind": "mcc", "label_delay_ms": delay_ms, "events": events})
    return with_mcc.map_batches(_assemble, batch_format="pandas", batch_size=None)


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
