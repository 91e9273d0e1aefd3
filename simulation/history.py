"""The ``fraudctl simulate`` job: labelled history to CSV/Parquet, profiles beside it and into DynamoDB."""

from __future__ import annotations

import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
from botocore.exceptions import ClientError
from tqdm import tqdm

from cluster.config import Settings
from cluster.datasets import write_transactions
from cluster.profiles import profile_paths, put_profiles
from cluster.schema import SCENARIO_COLUMN
from simulation.generator import Progress, SimulatedHistory, SimulationConfig, simulate_history
from simulation.world_shift import WorldShift

HISTORY_STAGES = (
    "population",
    "genuine traffic",
    "fraud scenarios",
    "validation",  # simulate_history
    "transactions file",
    "profile files",
)  # write_history
STAGES = (*HISTORY_STAGES, "DynamoDB profiles")


def run_simulate(
    settings: Settings,
    *,
    out: Path,
    users: int,
    days: int,
    start: date,
    seed: int,
    fraud_rate: float,
    shift: WorldShift | None = None,
    shift_from: date | None = None,
) -> dict[str, Any]:
    """Simulate, write everything, and return a short summary (rows, fraud rate, rows per scenario, files).
    ``shift`` changes the world from ``shift_from`` on (default: the first day), for drift to measure offline."""
    out = Path(out)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise ValueError(f"out: unsupported file type {out.suffix!r}; use .csv or .parquet")
    config = SimulationConfig(n_users=users, days=days, start=start, seed=seed, fraud_rate=fraud_rate)
    began = time.perf_counter()
    with tqdm(total=len(STAGES), desc="simulate", unit="stage", file=sys.stderr) as bar:

        def advance(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update()

        history = simulate_history(config, progress=advance)
        history.transactions = transactions = _shifted(history.transactions, shift, shift_from)
        users_path, merchants_path = write_history(history, out, progress=advance)
        profiles = _publish_profiles(settings, history.users, history.merchants)
        advance("DynamoDB profiles")

    return {
        "rows": len(transactions),
        "users": users,
        "merchants": len(history.merchants),
        "days": days,
        "start": config.start.date().isoformat(),
        "seed": seed,
        "fraud_rate": round(float(transactions["is_fraud"].mean()), 5),
        "fraud_rows": int(transactions["is_fraud"].sum()),
        "rows_per_scenario": transactions[SCENARIO_COLUMN].value_counts().sort_index().to_dict(),
        "world_shift": (shift or WorldShift()).describe() + (f" from {shift_from}" if shift and shift_from else ""),
        "seconds": round(time.perf_counter() - began, 1),
        "files": {"transactions": str(out), "users": str(users_path), "merchants": str(merchants_path)},
        "profiles": profiles,
    }


def _shifted(transactions: pd.DataFrame, shift: WorldShift | None, shift_from: date | None) -> pd.DataFrame:
    if shift is None:
        return transactions
    if shift_from is None:
        return shift.apply(transactions)
    later = pd.to_datetime(transactions["timestamp"], utc=True) >= pd.Timestamp(shift_from, tz="UTC")
    shifted = transactions.copy()
    shifted.loc[later] = shift.apply(transactions.loc[later])
    return shifted


def write_history(history: SimulatedHistory, out: Path, progress: Progress | None = None) -> tuple[Path, Path]:
    """The transactions to ``out`` and the profiles beside it, where ``fraudctl train`` and ``rules test`` read them;
    returns the users' and merchants' paths. ``progress`` hears "transactions file" and "profile files"."""
    done = progress or (lambda stage: None)
    write_transactions(history.transactions, out)
    done("transactions file")
    users_path, merchants_path = profile_paths(out)
    history.users.to_parquet(users_path, index=False)
    history.merchants.to_parquet(merchants_path, index=False)
    done("profile files")
    return users_path, merchants_path


def _publish_profiles(settings: Settings, users: Any, merchants: Any) -> str:
    """Load the profiles into DynamoDB when an AWS endpoint is configured; otherwise say where they are."""
    if not settings.uses_real_aws:
        return (
            "sidecar parquet files only: no AWS endpoint configured (set FRAUD_AWS_ENDPOINT_URL to a running "
            "`fraudctl up`, or configure real AWS, to load them into DynamoDB)"
        )
    try:
        written_users = put_profiles(settings.user_table, users, settings)
        written_merchants = put_profiles(settings.merchant_table, merchants, settings)
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ResourceNotFoundException":
            raise RuntimeError(
                f"DynamoDB tables {settings.user_table!r}/{settings.merchant_table!r} do not exist at "
                f"{settings.aws_endpoint_url or settings.region}: run `fraudctl up` once to create "
                "them"
            ) from exc
        raise
    return (
        f"DynamoDB: {written_users} users into {settings.user_table}, {written_merchants} merchants into "
        f"{settings.merchant_table}"
    )
