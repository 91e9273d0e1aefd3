"""``fraudctl retrain``: the kept transactions (``transactions/``) joined with the feedback labels (``feedback/``),
plus the bootstrap history when one is configured, trained with the same pipeline and budget as ``fraudctl
train``; the new version is registered as a challenger (never promoted here) and started in shadow.

Labels arrive late: a kept transaction older than the label delay with no fraud report counts as genuine (its
chargeback would have arrived by now); a newer unlabelled one is left out, since its label may still come.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from cluster.config import Settings
from cluster.datasets import read_transactions, write_transactions
from cluster.profiles import MERCHANT_PROFILE_COLUMNS, USER_PROFILE_COLUMNS, profile_paths, scan_profiles
from cluster.schema import CANONICAL_COLUMNS, LABEL_COLUMN
from serve.champion import FEEDBACK_PREFIX, TRANSACTIONS_PREFIX, read_log
from serve.rollout import RolloutStore
from training.pipeline import TrainOptions, run_train

log = logging.getLogger(__name__)


def training_history(
    kept: pd.DataFrame, feedback: pd.DataFrame, *, as_of: datetime, label_delay: timedelta
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Kept transactions with a label each: the latest feedback report where there is one; genuine when older
    than ``label_delay`` at ``as_of`` with none; left out otherwise. Returns the rows and how many of each."""
    if kept.empty:
        return pd.DataFrame(columns=[*CANONICAL_COLUMNS, LABEL_COLUMN]), {
            "kept": 0,
            "labelled": 0,
            "assumed_genuine": 0,
            "awaiting_label": 0,
        }
    frame = kept.drop_duplicates("transaction_id", keep="last").reset_index(drop=True)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    if feedback.empty:
        labels = pd.DataFrame(columns=["transaction_id", LABEL_COLUMN])
    else:
        labels = feedback.sort_values("reported_at").drop_duplicates("transaction_id", keep="last")[
            ["transaction_id", LABEL_COLUMN]
        ]
    joined = frame.drop(columns=[LABEL_COLUMN], errors="ignore").merge(labels, on="transaction_id", how="left")
    labelled = joined[LABEL_COLUMN].notna()
    settled = joined["timestamp"] <= pd.Timestamp(as_of) - pd.Timedelta(label_delay)
    keep = labelled | settled
    joined[LABEL_COLUMN] = joined[LABEL_COLUMN].fillna(0).astype(int)
    counts = {
        "kept": len(joined),
        "labelled": int(labelled.sum()),
        "assumed_genuine": int((settled & ~labelled).sum()),
        "awaiting_label": int((~keep).sum()),
    }
    columns = [c for c in (*CANONICAL_COLUMNS, LABEL_COLUMN) if c in joined.columns]
    return joined.loc[keep, columns].reset_index(drop=True), counts


def _write_profiles(settings: Settings, history: Path) -> int:
    """The profiles serving reads (DynamoDB), beside the history file, so training sees the same ones."""
    written = 0
    for path, table, columns in zip(
        profile_paths(history),
        (settings.user_table, settings.merchant_table),
        (USER_PROFILE_COLUMNS, MERCHANT_PROFILE_COLUMNS),
    ):
        profiles = scan_profiles(table, columns, settings)
        if len(profiles):
            profiles.to_parquet(path, index=False)
            written += len(profiles)
    return written


def run_retrain(
    settings: Settings,
    *,
    since: date | None = None,
    until: date | None = None,
    trials: int | None = None,
    objective: str = "f1",
) -> dict[str, Any]:
    """Build the training set (transactions from ``since`` through ``until``, days inclusive), train, register the
    challenger and start it in shadow; the summary the CLI prints."""
    progress = tqdm(total=3, desc="reading kept transactions", unit="stage")
    kept = read_log(settings, TRANSACTIONS_PREFIX)
    feedback = read_log(settings, FEEDBACK_PREFIX)
    history, counts = training_history(
        kept, feedback, as_of=datetime.now(timezone.utc), label_delay=settings.label_delay
    )
    base = settings.retrain_history or (settings.bootstrap_history if settings.bootstrap_history.exists() else None)
    if base is not None:
        bootstrap = read_transactions(base, labelled=True)
        history = history[~history["transaction_id"].isin(bootstrap["transaction_id"])]
        history = pd.concat([bootstrap, history], ignore_index=True)
        counts["bootstrap"] = len(bootstrap)
    if since is not None:
        history = history[history["timestamp"] >= pd.Timestamp(since, tz="UTC")]
    if until is not None:
        history = history[history["timestamp"] < pd.Timestamp(until, tz="UTC") + pd.Timedelta(days=1)]
    if history.empty:
        raise ValueError("no labelled history to train on: nothing kept yet (score some traffic first)")
    progress.set_description("joined feedback labels")
    progress.update(1)
    folder = Path(settings.data_dir).resolve() / "retrain" / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    path = write_transactions(history, folder / "history.parquet")
    profiles = _write_profiles(settings, path)
    progress.set_description("wrote the training set")
    progress.update(1)
    progress.close()
    summary = run_train(settings, TrainOptions(data=path, trials=trials, objective=objective, promote=False))
    state = RolloutStore(settings).start(summary["version"], 0.0, f"retrained on {len(history)} rows")
    result = {
        "version": summary["version"],
        "metrics": summary["test"],
        "rows": summary["rows"],
        "history": {
            **counts,
            "rows": len(history),
            "frauds": int(history[LABEL_COLUMN].sum()),
            "profiles": profiles,
            "file": str(path),
        },
        "rollout": {"mode": state.mode, "share": state.share, "since": state.since},
        "seconds": summary["seconds"],
    }
    log.info("retrained %s on %d rows; in shadow", summary["version"], len(history))
    return result
