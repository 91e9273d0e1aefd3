"""The training section of ``fraudctl bench``: our backtest against the standard baseline on a handbook-style file."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from cluster.config import Settings
from cluster.datasets import read_transactions, write_transactions
from cluster.schema import LABEL_COLUMN
from training.backtest import BacktestWindow, run_backtest
from training.baseline import HandbookConfig, baseline_scores, simulate_handbook, window_of


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
        scored = pd.read_csv(out, dtype={"transaction_id": str})
    base = baseline_scores(transactions, train=(window.start, window.train_end),
                           test=(window.test_start, window.test_end), delay_days=window.delay_days)
    labels = transactions.set_index("transaction_id")[LABEL_COLUMN]

    def quality(scores: pd.DataFrame) -> dict[str, float]:
        y = labels.loc[scores["transaction_id"]].to_numpy()
        return {"average_precision": round(float(average_precision_score(y, scores["fraud_score"])), 4),
                "roc_auc": round(float(roc_auc_score(y, scores["fraud_score"])), 4)}

    ours_quality, base_quality = quality(scored), quality(base)
    return {"dataset": {"rows": len(transactions), "customers": config.customers, "terminals": config.terminals,
                        "days": config.days, "fraud_rate": round(float(transactions[LABEL_COLUMN].mean()), 5)},
            "window": ours["window"], "ours": ours_quality, "baseline": base_quality,
            "average_precision_gain": round(ours_quality["average_precision"] / base_quality["average_precision"] - 1,
                                            4),
            "backtest_seconds": round(backtest_seconds, 1)}
