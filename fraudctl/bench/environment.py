"""The environment the serving and stream benches measure in."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import pandas as pd

from cluster.config import Settings
from cluster.profiles import MERCHANT_PROFILE_COLUMNS, USER_PROFILE_COLUMNS, profile_paths, put_profiles
from cluster.runtime import aws_endpoint, ray_runtime
from simulation.history import run_simulate
from training.pipeline import TrainOptions, run_train

BENCH_USERS = 400  # the simulated population whose profiles the benches load


@contextmanager
def trained_environment(
    settings: Settings, *, users: int = BENCH_USERS, days: int = 28
) -> Iterator[tuple[Settings, Path, str]]:
    """Embedded AWS, local Ray, simulated history with profiles in DynamoDB, and a model trained on it (small
    Tune budget) as champion: what the serving and stream benches measure against. Yields (settings, data, version).
    """
    workdir = Path(tempfile.mkdtemp(prefix="fraud-bench-"))
    base = settings.model_copy(update={"aws_mode": "embedded", "aws_endpoint_url": None, "data_dir": workdir})
    try:
        with aws_endpoint(base) as live, ray_runtime(live, num_cpus=os.cpu_count()):
            data = workdir / "history.parquet"
            run_simulate(
                live, out=data, users=users, days=days, start=date(2026, 1, 1), seed=live.seed, fraud_rate=0.02
            )
            users_path, merchants_path = profile_paths(data)
            put_profiles(live.user_table, pd.read_parquet(users_path)[list(USER_PROFILE_COLUMNS)], live)
            put_profiles(live.merchant_table, pd.read_parquet(merchants_path)[list(MERCHANT_PROFILE_COLUMNS)], live)
            version = run_train(live, TrainOptions(data=data, trials=2))["version"]
            yield live, data, version
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
