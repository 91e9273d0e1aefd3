"""Online feature state: keyed history in Ray actors, partitioned by a stable hash of user, merchant and category.

Each actor keeps, per key, the rows the feature windows can still see (30 days, at most the per-key cap) and runs
the very same passes as the offline builder (``cluster.features``) on history + micro-batch. Idle keys expire with
their last row; state snapshots to S3 and restores, so a restarted actor loses nothing. ``OnlineFeatures`` is the
one public coordinator: ``compute`` (features for a batch), ``record_labels`` (label feedback), ``snapshot``,
``restore``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from cluster.config import Settings, get_settings
from cluster.features import (EVENT_ROW_COLUMNS, MERCHANT_HISTORY_CAP, RETENTION_MS, USER_HISTORY_CAP,
                              USER_PASS_OUTPUTS, USER_ROW_COLUMNS, align_profiles, assemble, mcc_pass, merchant_pass,
                              partition_of, prepare_rows, stable_hash, user_pass, epoch_ms)

ACTOR_NAMESPACE = "fraud"
SNAPSHOT_PREFIX = "feature-state"
_FLOAT_COLUMNS = frozenset({"amount", "lat", "lon"})
MERCHANT_STATE_COLUMNS = (*EVENT_ROW_COLUMNS, "txn_key", "mcc_key")
LABEL_STATE_COLUMNS = ("key", "known_ms", "txn_key")
COMPACT_EVERY_BATCHES = 16


class KeyedHistory:
    """Columnar rows grouped by key (arrival order within a key): O(batch) lookups, vectorised insert and evict."""

    def __init__(self, columns: tuple[str, ...], key: str, time: str):
        self.columns, self.key, self.time = columns, key, time
        self.data = {c: np.zeros(0, np.float64 if c in _FLOAT_COLUMNS else np.int64) for c in columns}

    def __len__(self) -> int:
        return len(self.data[self.key])

    @property
    def nbytes(self) -> int:
        return sum(values.nbytes for values in self.data.values())

    @property
    def key_count(self) -> int:
        keys = self.data[self.key]
        return int(np.count_nonzero(np.diff(keys)) + 1) if len(keys) else 0

    def take(self, keys: np.ndarray) -> pd.DataFrame:
        """Every retained row of these keys."""
        wanted = np.unique(keys)
        stored = self.data[self.key]
        lower, upper = np.searchsorted(stored, wanted, "left"), np.searchsorted(stored, wanted, "right")
        lengths = upper - lower
        offsets = np.repeat(lower - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        index = offsets + np.arange(int(lengths.sum()))
        return pd.DataFrame({c: values[index] for c, values in self.data.items()})

    def append(self, rows: pd.DataFrame) -> None:
        order = np.argsort(rows[self.key].to_numpy(np.int64), kind="stable")
        new_keys = rows[self.key].to_numpy(np.int64)[order]
        positions = np.searchsorted(self.data[self.key], new_keys, "right")
        self.data = {c: np.insert(values, positions, rows[c].to_numpy(values.dtype)[order])
                     for c, values in self.data.items()}

    def evict(self, horizon: int, cap: int) -> None:
        """Drop rows at or before ``horizon`` and all but each key's last ``cap`` rows."""
        keep = self.data[self.time] > horizon
        keys = self.data[self.key]
        if len(keys):
            last_of_key = np.searchsorted(keys, keys, "right") - 1
            keep &= (last_of_key - np.arange(len(keys))) < cap
        self.data = {c: values[keep] for c, values in self.data.items()}

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.data)

    def load(self, frame: pd.DataFrame) -> None:
        self.data = {c: frame[c].to_numpy(np.float64 if c in _FLOAT_COLUMNS else np.int64) for c in self.columns}


class FeatureStateCore:
    """The state of one partition of one key kind ("user", "merchant" or "mcc"); plain Python, wrapped by an actor."""

    def __init__(self, kind: str):
        if kind not in ("user", "merchant", "mcc"):
            raise ValueError(f"kind must be user, merchant or mcc, not {kind!r}")
        self.kind = kind
        if kind == "user":
            self.rows = KeyedHistory(USER_ROW_COLUMNS, "user_key", "ts_ms")
        else:
            self.rows = KeyedHistory(MERCHANT_STATE_COLUMNS if kind == "merchant" else EVENT_ROW_COLUMNS, "key", "ts_ms")
        self.labels = KeyedHistory(LABEL_STATE_COLUMNS, "key", "known_ms")
        self.cap = USER_HISTORY_CAP if kind == "user" else MERCHANT_HISTORY_CAP
        self.watermark = np.iinfo(np.int64).min + RETENTION_MS
        self.batches = 0

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Features of these rows given the retained history, then remember the rows."""
        keys = batch[self.rows.key].to_numpy(np.int64)
        history = self.rows.take(keys)
        if self.kind == "user":
            result = user_pass(history, batch)
        else:
            labels = self.labels.take(keys)
            result = (merchant_pass if self.kind == "merchant" else mcc_pass)(history, batch, labels)
        self.rows.append(batch)
        if len(batch):
            self.watermark = max(self.watermark, int(batch["ts_ms"].max()))
        self.batches += 1
        if self.batches % COMPACT_EVERY_BATCHES == 0:
            self.compact()
        return result

    def compact(self) -> None:
        horizon = self.watermark - RETENTION_MS
        self.rows.evict(horizon, self.cap)
        self.labels.evict(horizon, np.iinfo(np.int64).max)

    def resolve(self, txn_keys: np.ndarray) -> pd.DataFrame:
        """Merchant and category of retained transactions (label feedback names only the transaction)."""
        found = np.isin(self.rows.data["txn_key"], txn_keys)
        return pd.DataFrame({"txn_key": self.rows.data["txn_key"][found], "merchant_key": self.rows.data["key"][found],
                             "mcc_key": self.rows.data["mcc_key"][found]})

    def add_labels(self, events: pd.DataFrame) -> int:
        """Remember confirmed frauds (``key, known_ms, txn_key``); a transaction counts once."""
        fresh = events.drop_duplicates("txn_key")
        fresh = fresh[~np.isin(fresh["txn_key"].to_numpy(np.int64), self.labels.data["txn_key"])]
        self.labels.append(fresh)
        return len(fresh)

    def stats(self) -> dict[str, int]:
        return {"rows": len(self.rows), "keys": self.rows.key_count, "labels": len(self.labels),
                "bytes": self.rows.nbytes + self.labels.nbytes}

    def dump(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, watermark=np.int64(self.watermark),
                            **{f"rows.{c}": v for c, v in self.rows.data.items()},
                            **{f"labels.{c}": v for c, v in self.labels.data.items()})
        return buffer.getvalue()

    def load(self, payload: bytes) -> None:
        with np.load(io.BytesIO(payload)) as arrays:
            self.watermark = int(arrays["watermark"])
            self.rows.data = {c: arrays[f"rows.{c}"] for c in self.rows.columns}
            self.labels.data = {c: arrays[f"labels.{c}"] for c in self.labels.columns}


class FeatureStateActor:
    """One partition's state in a Ray actor; snapshots go to ``s3://{model_bucket}/feature-state/...``."""

    def __init__(self, kind: str, partition: int, partitions: int, settings: Settings, restore: bool = True):
        self.core = FeatureStateCore(kind)
        self.settings = settings
        self.object_key = f"{SNAPSHOT_PREFIX}/{kind}-{partition}-of-{partitions}.npz"
        if restore:
            self.restore()

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        return self.core.process(batch)

    def resolve(self, txn_keys: np.ndarray) -> pd.DataFrame:
        return self.core.resolve(txn_keys)

    def add_labels(self, events: pd.DataFrame) -> int:
        return self.core.add_labels(events)

    def stats(self) -> dict[str, int]:
        return self.core.stats()

    def snapshot(self) -> str:
        from cluster.aws import client

        self.core.compact()
        client("s3", self.settings).put_object(Bucket=self.settings.model_bucket, Key=self.object_key,
                                               Body=self.core.dump())
        return self.object_key

    def restore(self) -> bool:
        from botocore.exceptions import ClientError

        from cluster.aws import client

        try:
            body = client("s3", self.settings).get_object(Bucket=self.settings.model_bucket, Key=self.object_key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404", "NoSuchBucket"):
                return False
            raise
        self.core.load(body["Body"].read())
        return True


class OnlineFeatures:
    """Features for micro-batches through the state actors: the same numbers ``build_features`` gives offline.

    Actors are named (``{name}-{kind}-{i}`` in namespace ``fraud``) and shared by every coordinator in the cluster;
    a fresh actor restores its partition from the last S3 snapshot.
    """

    def __init__(self, settings: Settings | None = None, *, user_partitions: int = 2, merchant_partitions: int = 2,
                 name: str = "features", actor_cpus: float = 0.2, user_store: Any = None, merchant_store: Any = None,
                 restore: bool = True):
        from cluster.profiles import merchant_store as default_merchant_store, user_store as default_user_store

        self.settings = settings or get_settings()
        self.name, self.actor_cpus, self.restore_on_start = name, actor_cpus, restore
        self.partitions = {"user": user_partitions, "merchant": merchant_partitions, "mcc": 1}
        self.user_store = user_store or default_user_store(self.settings)
        self.merchant_store = merchant_store or default_merchant_store(self.settings)
        self.actors = {kind: [self._actor(kind, i) for i in range(n)] for kind, n in self.partitions.items()}

    def _actor(self, kind: str, partition: int) -> Any:
        import ray

        remote = ray.remote(FeatureStateActor).options(
            name=f"{self.name}-{kind}-{partition}", namespace=ACTOR_NAMESPACE, get_if_exists=True,
            num_cpus=self.actor_cpus, max_concurrency=1)
        return remote.remote(kind, partition, self.partitions[kind], self.settings, self.restore_on_start)

    def compute(self, batch: pd.DataFrame) -> pd.DataFrame:
        """``transaction_id`` + ``FEATURE_NAMES`` for a canonical batch, in its order; the batch joins the state."""
        import ray

        from cluster.enrichment import fetch_profiles
        from cluster.profiles import MERCHANT_PROFILE_COLUMNS, USER_PROFILE_COLUMNS

        batch = batch.reset_index(drop=True)
        users = align_profiles(batch["user_id"], fetch_profiles(self.user_store, batch["user_id"].unique(),
                                                                USER_PROFILE_COLUMNS), "user_id", USER_PROFILE_COLUMNS)
        merchants = align_profiles(batch["merchant_id"], fetch_profiles(
            self.merchant_store, batch["merchant_id"].unique(), MERCHANT_PROFILE_COLUMNS), "merchant_id",
            MERCHANT_PROFILE_COLUMNS)
        rows = prepare_rows(batch, users, merchants)
        merchant_rows = pd.DataFrame({"key": rows["merchant_key"], "ts_ms": rows["ts_ms"], "txn_key": rows["txn_key"],
                                      "mcc_key": rows["mcc_key"]})
        mcc_rows = pd.DataFrame({"key": rows["mcc_key"], "ts_ms": rows["ts_ms"]})
        plans = [("user", rows[list(USER_ROW_COLUMNS)], rows["user_key"].to_numpy(), np.ones(len(rows), bool)),
                 ("merchant", merchant_rows, rows["merchant_key"].to_numpy(), np.ones(len(rows), bool)),
                 ("mcc", mcc_rows, rows["mcc_key"].to_numpy(), rows["mcc_key"].to_numpy() != 0)]
        pending = []
        for kind, frame, keys, eligible in plans:
            owner = partition_of(keys, self.partitions[kind])
            for partition, actor in enumerate(self.actors[kind]):
                selected = np.flatnonzero(eligible & (owner == partition))
                if len(selected):
                    pending.append((kind, selected, actor.process.remote(frame.iloc[selected].reset_index(drop=True))))
        outputs: dict[str, pd.DataFrame] = {}
        results = ray.get([ref for _, _, ref in pending])
        for kind, columns in (("user", USER_PASS_OUTPUTS), ("merchant", None), ("mcc", None)):
            parts = [(selected, result) for (k, selected, _), result in zip(pending, results) if k == kind]
            names = columns or (parts[0][1].columns if parts else _event_output_names(kind))
            frame = pd.DataFrame({name: np.zeros(len(rows)) for name in names})
            for selected, result in parts:
                frame.iloc[selected] = result[list(names)].to_numpy()
            outputs[kind] = frame
        features = assemble(rows, outputs["user"], outputs["merchant"], outputs["mcc"], users, merchants)
        features.insert(0, "transaction_id", batch["transaction_id"].astype("string").to_numpy(dtype=object))
        return features

    def record_labels(self, events: pd.DataFrame) -> int:
        """Apply label feedback (``transaction_id, is_fraud, known_at``, optional ``merchant_id``) to merchant risk.

        Confirmed frauds count from their ``known_at``; genuine verdicts change nothing. Returns how many frauds
        were applied (a transaction no longer retained and without ``merchant_id`` cannot be placed).
        """
        import ray

        missing = [c for c in ("transaction_id", "is_fraud", "known_at") if c not in events.columns]
        if missing:
            raise ValueError(f"label events lack column(s): {', '.join(missing)}")
        fraud = events[pd.to_numeric(events["is_fraud"].replace({True: 1, False: 0}), errors="coerce") == 1]
        if fraud.empty:
            return 0
        labels = pd.DataFrame({"txn_key": stable_hash(fraud["transaction_id"]), "known_ms": epoch_ms(fraud["known_at"]),
                               "named_merchant": stable_hash(fraud["merchant_id"]) if "merchant_id" in fraud
                               else np.zeros(len(fraud), np.int64)})
        owners = self.actors["merchant"]
        named = labels["named_merchant"].to_numpy()
        targets = partition_of(named, len(owners))
        refs = [actor.resolve.remote(labels["txn_key"].to_numpy()[(named == 0) | (targets == i)])
                for i, actor in enumerate(owners)]
        resolved = pd.concat(ray.get(refs), ignore_index=True).drop_duplicates("txn_key")
        labels = labels.merge(resolved, on="txn_key", how="left")
        labels["merchant_key"] = np.where(labels["named_merchant"] != 0, labels["named_merchant"],
                                          labels["merchant_key"].fillna(0)).astype(np.int64)
        labels["mcc_key"] = labels["mcc_key"].fillna(0).astype(np.int64)
        applied = []
        for kind, key in (("merchant", "merchant_key"), ("mcc", "mcc_key")):
            placed = labels[labels[key] != 0]
            owner = partition_of(placed[key].to_numpy(np.int64), self.partitions[kind])
            for partition, actor in enumerate(self.actors[kind]):
                part = placed[owner == partition]
                if len(part):
                    ref = actor.add_labels.remote(pd.DataFrame({"key": part[key], "known_ms": part["known_ms"],
                                                                "txn_key": part["txn_key"]}))
                    applied.append((kind, ref))
        counts = ray.get([ref for _, ref in applied])
        return int(sum(count for (kind, _), count in zip(applied, counts) if kind == "merchant"))

    def snapshot(self) -> list[str]:
        """Write every partition's state to S3; returns the object keys."""
        import ray

        return ray.get([actor.snapshot.remote() for actors in self.actors.values() for actor in actors])

    def restore(self) -> list[bool]:
        """Reload every partition from its last snapshot (a partition without one keeps its state)."""
        import ray

        return ray.get([actor.restore.remote() for actors in self.actors.values() for actor in actors])

    def stats(self) -> dict[str, dict[str, int]]:
        import ray

        totals: dict[str, dict[str, int]] = {}
        for kind, actors in self.actors.items():
            parts = ray.get([actor.stats.remote() for actor in actors])
            totals[kind] = {name: sum(p[name] for p in parts) for name in parts[0]}
        return totals

    def shutdown(self) -> None:
        """Stop the actors (state not snapshotted is lost)."""
        import ray

        for actors in self.actors.values():
            for actor in actors:
                ray.kill(actor)


def _event_output_names(kind: str) -> list[str]:
    empty = pd.DataFrame({c: np.zeros(0, np.int64) for c in EVENT_ROW_COLUMNS})
    labels = pd.DataFrame({"key": np.zeros(0, np.int64), "known_ms": np.zeros(0, np.int64)})
    return list((merchant_pass if kind == "merchant" else mcc_pass)(empty, empty, labels).columns)


def bench_features_online(settings: Settings, rows: int = 200_000, batch_rows: int = 5_000) -> dict[str, Any]:
    """Transactions/s through the state actors in micro-batches, and state memory per 100,000 users."""
    import time

    from cluster.offline_features import synthetic_transactions
    from cluster.runtime import aws_endpoint, ray_runtime

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
                    online.compute(transactions.iloc[start:start + batch_rows])
                seconds = time.perf_counter() - started
                stats = online.stats()
            finally:
                online.shutdown()
    user_state = stats["user"]
    return {"transactions": rows - batch_rows, "batch_rows": batch_rows, "seconds": round(seconds, 2),
            "tx_per_s": round((rows - batch_rows) / seconds), "goal_tx_per_s": 20_000,
            "profile_cache_warmup_seconds": round(warm_seconds, 2),
            "user_keys": user_state["keys"], "user_state_rows": user_state["rows"],
            "user_state_mb_per_100k_users": round(user_state["bytes"] / user_state["keys"] * 100_000 / 2**20, 1),
            "note": f"{rows / users:.1f} transactions per user retained; profiles from a warm ProfileStore cache (cold keys cost one BatchGetItem per 100 users, timed apart)"}
