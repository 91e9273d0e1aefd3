"""Canonical transaction files (CSV or Parquet): read with the schema's rules, write canonical columns."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cluster.schema import CANONICAL_COLUMNS, LABEL_COLUMN, SCENARIO_COLUMN, TIMESTAMP_FORMAT, validate_frame

SUPPORTED_SUFFIXES = (".csv", ".parquet")


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv or .parquet")
    return suffix


def read_transactions(path: str | Path, *, labelled: bool = False) -> pd.DataFrame:
    """Read and validate a transaction file; rows come back sorted by timestamp (stable)."""
    path = Path(path)
    if _check_suffix(path) == ".csv":
        raw = pd.read_csv(
            path,
            dtype={
                "transaction_id": str,
                "user_id": str,
                "merchant_id": str,
                "mcc": str,
                "device_id": str,
                "currency": str,
                "country": str,
                "channel": str,
            },
            keep_default_na=True,
        )
    else:
        raw = pd.read_parquet(path)
    frame = validate_frame(raw, labelled=labelled)
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def write_transactions(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write canonical columns (plus label and scenario when present); timestamps as ISO-8601 UTC strings."""
    path = Path(path)
    suffix = _check_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [c for c in (*CANONICAL_COLUMNS, LABEL_COLUMN, SCENARIO_COLUMN) if c in frame.columns]
    out = frame[columns].copy()
    out["timestamp"] = pd.to_datetime(out["timestamp"], utc=True).dt.strftime(TIMESTAMP_FORMAT)
    if suffix == ".csv":
        out.to_csv(path, index=False)
    else:
        out.to_parquet(path, index=False)
    return path
