"""The training section of ``fraudctl bench``: our backtest against the standard baseline on a handbook-style file."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from cluster.config import Settings
from cluster.datasets import read_transactions, write_transactions
from cluster.schema import LABEL_COLUMN
from training.backtest import BacktestWindow, run_backtest
from training.baseline import HandbookConfig, simulate_handbook, window_of
from training.quality import judge_scores


def bench_training(settings: Settings) -> dict[str, Any]:
    """`fraudctl bench` section: our backtest against the baseline on the same handbook-style file and window."""
    config = HandbookConfig()
    window = BacktestWindow(**window_of(config))
    with tempfile.TemporaryDirectory() as folder:
        data, out = Path(folder) / "handbook.csv", Path(folder) / "scores.csv"
        write_transactions(simulate_handbook(config).drop(columns=["fraud_scenario"]), data)
        transactions = read_transactions(data, labelled=True)
        started = time.perf_counter()
        ours = run_backtest(settings, data=data, window=window, out=out)
        backtest_seconds = time.perf_counter() - started
        judged = judge_scores(data, out, window)
    return {
        "dataset": {
            "rows": len(transactions),
            "customers": config.customers,
            "terminals": config.terminals,
            "days": config.days,
            "fraud_rate": round(float(transactions[LABEL_COLUMN].mean()), 5),
        },
        "window": ours["window"],
        "ours": judged["ours"],
        "baseline": judged["baseline"],
        "average_precision_gain": round(judged["ap_ratio_to_baseline"] - 1, 4),
        "ranking_check": ours.get("ranking_check"),
        "model_selection": ours.get("model_selection"),
        "backtest_seconds": round(backtest_seconds, 1),
    }
