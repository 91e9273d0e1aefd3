"""Training data: labelled transactions -> causal features -> time-ordered splits that respect the label delay.

A model deployed at time T only knows labels of transactions older than T - label_delay. So every split
boundary leaves a gap of one label delay: a model trained on [a, b) is validated from b + delay on, and the
test period starts one delay after validation ends. No random split anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from cluster.datasets import read_transactions
from cluster.features import build_features
from cluster.profiles import profile_paths
from cluster.schema import LABEL_COLUMN, SCENARIO_COLUMN


@dataclass(frozen=True)
class Split:
    """One period's model inputs, rows in time order."""

    name: str
    x: np.ndarray
    y: np.ndarray
    frame: pd.DataFrame  # transaction_id, user_id, merchant_id, amount, timestamp, is_fraud[, fraud_scenario]

    def __len__(self) -> int:
        return len(self.y)

    @property
    def fraud_count(self) -> int:
        return int(self.y.sum())

    def summary(self) -> dict[str, Any]:
        timestamps = self.frame["timestamp"]
        return {
            "rows": len(self),
            "frauds": self.fraud_count,
            "fraud_rate": round(self.fraud_count / max(len(self), 1), 5),
            "start": str(timestamps.min()) if len(self) else None,
            "end": str(timestamps.max()) if len(self) else None,
        }


@dataclass(frozen=True)
class Periods:
    """Half-open time periods [start, end) for train, validation and test."""

    train: tuple[pd.Timestamp, pd.Timestamp]
    validation: tuple[pd.Timestamp, pd.Timestamp]
    test: tuple[pd.Timestamp, pd.Timestamp] | None


def time_periods(
    start: pd.Timestamp,
    end: pd.Timestamp,
    *,
    label_delay: timedelta,
    history: timedelta = timedelta(days=3),
    validation_share: float = 0.2,
    test_share: float = 0.2,
) -> Periods:
    """Split [start, end) by time: feature history first, then train, validation, test, one label delay apart."""
    usable = (end - start) - history - 2 * pd.Timedelta(label_delay)
    if usable <= pd.Timedelta(days=1):
        raise ValueError(
            f"data spans {end - start}, too short for {history} of history and two label delays "
            f"of {label_delay}: need more days of transactions"
        )
    train_start = start + history
    train_end = train_start + usable * (1 - validation_share - test_share)
    validation_start = train_end + label_delay
    validation_end = validation_start + usable * validation_share
    test_start = validation_end + label_delay
    return Periods(
        train=(train_start, train_end),
        validation=(validation_start, validation_end),
        test=(test_start, end) if test_share > 0 else None,
    )


CV_FOLDS = 3
CV_VALIDATION_SHARE = 0.45  # the share of the rows (the latest) that the folds validate on


class Fold(NamedTuple):
    """Row positions a model is fitted on and then validated on, and the time between them."""

    train: np.ndarray
    valid: np.ndarray
    gap: pd.Timedelta


def rolling_folds(
    timestamps: pd.Series,
    *,
    label_delay: timedelta,
    folds: int = CV_FOLDS,
    validation_share: float = CV_VALIDATION_SHARE,
) -> list[Fold]:
    """Rolling-origin folds over rows by their time (any row order).

    The latest ``validation_share`` of the rows are cut into ``folds`` blocks of (nearly) as many rows each, so a
    stretch without rows (the label-delay gap between a training and a validation period) makes no empty block;
    fold k validates on block k and trains on every row older than the block less a gap of one label delay (a model
    trained on [a, b) scores from b + delay on). When the shortest block lasts less than the delay, the gap is that
    block's length instead, so the first fold still trains on most of what precedes it; each fold records its gap.
    No fold ever trains on a row at or after its validation block.
    """
    times = timestamps.to_numpy(dtype="datetime64[ns]")
    if not len(times):
        raise ValueError("no rows to cut into folds")
    ordered = np.sort(times)
    first = int(len(ordered) * (1 - validation_share))
    edges = [ordered[min(first + (len(ordered) - first) * k // folds, len(ordered) - 1)] for k in range(folds)]
    edges.append(ordered[-1] + np.timedelta64(1, "ns"))
    shortest = min(b - a for a, b in zip(edges, edges[1:]))
    gap = min(np.timedelta64(pd.Timedelta(label_delay).value, "ns"), shortest)
    positions = np.arange(len(times))
    out = []
    for valid_start, valid_end in zip(edges, edges[1:]):
        train = positions[times < valid_start - gap]
        valid = positions[(times >= valid_start) & (times < valid_end)]
        if len(train) and len(valid):
            out.append(Fold(train, valid, pd.Timedelta(gap)))
    if not out:
        raise ValueError("the training window is too short to hold out any time block for validation")
    return out


def folds_with_fraud(folds: list[Fold], y: np.ndarray) -> list[Fold]:
    """The folds with at least one fraud among both their training and their validation rows (a quiet day
    validates nothing); at least one must remain."""
    kept = [fold for fold in folds if y[fold.train].any() and y[fold.valid].any()]
    if not kept:
        raise ValueError(
            f"is_fraud: none of the {len(folds)} rolling time folds of the training window has frauds "
            "among both its training and its validation rows; train on a longer window"
        )
    return kept


def frame_columns(transactions: pd.DataFrame) -> list[str]:
    keep = ["transaction_id", "user_id", "merchant_id", "amount", "timestamp", LABEL_COLUMN]
    return keep + ([SCENARIO_COLUMN] if SCENARIO_COLUMN in transactions.columns else [])


def take(
    name: str,
    transactions: pd.DataFrame,
    features: pd.DataFrame,
    feature_names: tuple[str, ...],
    period: tuple[pd.Timestamp, pd.Timestamp],
) -> Split:
    """Rows whose timestamp lies in ``period``; ``features`` is aligned row for row with ``transactions``."""
    mask = ((transactions["timestamp"] >= period[0]) & (transactions["timestamp"] < period[1])).to_numpy()
    frame = transactions.loc[mask, frame_columns(transactions)].reset_index(drop=True)
    x = features.loc[mask, list(feature_names)].to_numpy(dtype=np.float32)
    return Split(name=name, x=x, y=frame[LABEL_COLUMN].to_numpy(dtype=np.int8), frame=frame)


def load_profiles(data: Path) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The user/merchant profile files beside ``data``, when present (external files have none)."""
    users_path, merchants_path = profile_paths(Path(data))
    users = pd.read_parquet(users_path) if Path(users_path).exists() else None
    merchants = pd.read_parquet(merchants_path) if Path(merchants_path).exists() else None
    return users, merchants


def featurize(
    transactions: pd.DataFrame,
    *,
    label_delay: timedelta,
    users: pd.DataFrame | None = None,
    merchants: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Causal features for every row (labels become known ``label_delay`` after each transaction)."""
    features = build_features(transactions, label_delay=label_delay, users=users, merchants=merchants)
    if (
        len(features) != len(transactions)
        or not (features["transaction_id"].to_numpy() == transactions["transaction_id"].to_numpy()).all()
    ):
        raise ValueError("build_features must return one row per transaction, in input order")
    return features


def read_labelled(data: Path) -> pd.DataFrame:
    transactions = read_transactions(data, labelled=True)
    if transactions.empty:
        raise ValueError(f"{data}: no transactions")
    return transactions
