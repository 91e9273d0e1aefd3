"""Champion/challenger: both models' decisions are logged, feedback labels are stored, and a comparison reports
precision/recall of each on the labelled transactions with McNemar's test (paired: same transactions).

Logs and labels are JSON-lines objects in the model bucket (``decisions/`` and ``feedback/``), written in batches,
so the comparison sees every replica's decisions and labels survive restarts. ``transactions/`` keeps every scored
transaction (canonical fields, score, risk level, model version): with the labels, the history ``fraudctl
retrain`` trains on.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson
import pandas as pd
from scipy.stats import binomtest, chi2

from cluster.aws import client
from cluster.config import Settings

DECISIONS_PREFIX = "decisions/"
FEEDBACK_PREFIX = "feedback/"
TRANSACTIONS_PREFIX = "transactions/"  # every scored transaction with its decision: history for retraining
LOG_JSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_SERIALIZE_NUMPY  # datetimes as ISO 8601 UTC, numpy scalars as numbers


def in_canary(transaction_id: str, share: float) -> bool:
    """A stable per-transaction draw, so a retried request is answered by the same model."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(transaction_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


class JsonLinesLog:
    """Buffered JSON-lines writer to ``s3://{model_bucket}/{prefix}``; flushes by size or age."""

    def __init__(self, settings: Settings, prefix: str, max_rows: int = 5_000, max_age_s: float = 5.0):
        self.settings, self.prefix = settings, prefix
        self.max_rows, self.max_age_s = max_rows, max_age_s
        self._rows: list[dict[str, Any]] = []
        self._since = time.monotonic()
        self._lock = threading.Lock()

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Buffer only, never write: for the hot path, with a background task calling ``flush``."""
        with self._lock:
            self._rows.extend(rows)

    def add(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._rows.extend(rows)
            due = len(self._rows) >= self.max_rows or time.monotonic() - self._since >= self.max_age_s
        if due:
            self.flush()

    def flush(self) -> int:
        with self._lock:
            rows, self._rows = self._rows, []
            self._since = time.monotonic()
        if not rows:
            return 0
        key = f"{self.prefix}{datetime.now(timezone.utc):%Y-%m-%d}/{uuid.uuid4().hex}.jsonl"
        body = b"\n".join(orjson.dumps(row, default=str, option=LOG_JSON_OPTIONS) for row in rows)
        client("s3", self.settings).put_object(Bucket=self.settings.model_bucket, Key=key, Body=body)
        return len(rows)


def read_log(settings: Settings, prefix: str, since: str | None = None) -> pd.DataFrame:
    """Every row under ``prefix``; with ``since`` (an ISO time) only the files of that day and later."""
    s3 = client("s3", settings)
    rows: list[dict[str, Any]] = []
    first_day = f"{prefix}{since[:10]}" if since else ""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.model_bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"] < first_day:
                continue
            body = s3.get_object(Bucket=settings.model_bucket, Key=item["Key"])["Body"].read().decode()
            rows.extend(json.loads(line) for line in body.splitlines() if line.strip())
    return pd.DataFrame(rows)


def decision_rows(
    champion: list[dict[str, Any]], challenger: list[dict[str, Any]], served_by_challenger: list[bool]
) -> list[dict[str, Any]]:
    logged_at = datetime.now(timezone.utc).isoformat()
    return [
        {
            "transaction_id": a["transaction_id"],
            "logged_at": logged_at,
            "champion_version": a["model_version"],
            "champion_score": a["fraud_score"],
            "champion_is_fraud": a["is_fraud"],
            "challenger_version": b["model_version"],
            "challenger_score": b["fraud_score"],
            "challenger_is_fraud": b["is_fraud"],
            "served": "challenger" if served else "champion",
        }
        for a, b, served in zip(champion, challenger, served_by_challenger)
    ]


def transaction_rows(records: list[dict[str, Any]], decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the transaction log keeps of each scored transaction: its canonical fields and the answer it got (the
    timestamp stays a datetime: the log's writer formats it, in ISO 8601 UTC)."""
    logged_at = datetime.now(timezone.utc).isoformat()
    return [
        {
            **record,
            "fraud_score": decision["fraud_score"],
            "risk_level": decision["risk_level"],
            "model_version": decision["model_version"],
            "logged_at": logged_at,
        }
        for record, decision in zip(records, decisions)
    ]


def mcnemar(champion_correct: np.ndarray, challenger_correct: np.ndarray) -> dict[str, Any]:
    """McNemar's test on paired correctness: exact binomial below 25 discordant pairs, else chi-square (corrected)."""
    only_champion = int(np.sum(champion_correct & ~challenger_correct))
    only_challenger = int(np.sum(~champion_correct & challenger_correct))
    discordant = only_champion + only_challenger
    if discordant == 0:
        return {"test": "mcnemar", "only_champion_correct": 0, "only_challenger_correct": 0, "p_value": 1.0}
    if discordant < 25:
        p_value = binomtest(only_champion, discordant, 0.5).pvalue
        method = "exact"
    else:
        statistic = (abs(only_champion - only_challenger) - 1) ** 2 / discordant
        p_value = float(chi2.sf(statistic, df=1))
        method = "chi-square with continuity correction"
    return {
        "test": "mcnemar",
        "method": method,
        "only_champion_correct": only_champion,
        "only_challenger_correct": only_challenger,
        "p_value": round(float(p_value), 6),
    }


def _precision_recall(decided: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    alerts, frauds, caught = int(decided.sum()), int(truth.sum()), int((decided & truth).sum())
    return {
        "alerts": alerts,
        "caught": caught,
        "precision": round(caught / alerts, 4) if alerts else None,
        "recall": round(caught / frauds, 4) if frauds else None,
    }


def compare(decisions: pd.DataFrame, feedback: pd.DataFrame, alpha: float = 0.05) -> dict[str, Any]:
    """Precision/recall of champion and challenger on labelled transactions, and whether they differ."""
    if decisions.empty or feedback.empty:
        return {"labelled": 0, "note": "no logged challenger decisions with feedback labels yet"}
    labels = feedback.sort_values("reported_at").drop_duplicates("transaction_id", keep="last")
    joined = decisions.drop_duplicates("transaction_id", keep="last").merge(
        labels[["transaction_id", "is_fraud"]], on="transaction_id"
    )
    truth = joined["is_fraud"].astype(bool).to_numpy()
    champion = joined["champion_is_fraud"].astype(bool).to_numpy()
    challenger = joined["challenger_is_fraud"].astype(bool).to_numpy()
    test = mcnemar(champion == truth, challenger == truth)
    return {
        "labelled": len(joined),
        "frauds": int(truth.sum()),
        "champion": {"versions": sorted(joined["champion_version"].unique()), **_precision_recall(champion, truth)},
        "challenger": {
            "versions": sorted(joined["challenger_version"].unique()),
            **_precision_recall(challenger, truth),
        },
        "significance": {**test, "alpha": alpha, "significant": test["p_value"] < alpha},
    }
