"""Known answers for the quality figures: recall at a fixed false-positive rate, and the novel-scenario hold-out."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from cluster.schema import LABEL_COLUMN, SCENARIO_COLUMN
from training.backtest import BacktestWindow
from training.quality import max_blend, ranking_quality, recall_at_fpr, threshold_at_fpr, without_scenario


def test_recall_at_a_fixed_false_positive_rate() -> None:
    genuine = np.arange(100) / 100  # 0.00 .. 0.99
    y = np.r_[np.zeros(100, int), np.ones(4, int)]
    scores = np.r_[genuine, [0.995, 0.985, 0.5, 0.1]]
    assert threshold_at_fpr(y, scores, 0.01) == pytest.approx(0.98)  # one genuine row (0.99) lies above it
    assert recall_at_fpr(y, scores, 0.01) == pytest.approx(0.5)
    assert recall_at_fpr(y, scores, 0.5) == pytest.approx(0.75)
    assert recall_at_fpr(y, scores, 0.01, among=np.r_[np.zeros(102, bool), [True, True]]) == 0.0


def test_ranking_quality_per_scenario() -> None:
    frame = pd.DataFrame({LABEL_COLUMN: [0] * 200 + [1, 1, 1], SCENARIO_COLUMN: ["none"] * 200 + ["a", "a", "b"]})
    scores = np.r_[np.linspace(0, 0.5, 200), [0.9, 0.1, 0.95]]
    quality = ranking_quality(frame, scores)
    assert quality["recall_at_1pct_fpr_by_scenario"] == {"a": 0.5, "b": 1.0}
    assert quality["frauds"] == 3 and 0 < quality["roc_auc"] < 1


def test_a_novel_scenario_leaves_training_and_history_but_stays_in_the_test_window() -> None:
    window = BacktestWindow(train_start=date(2026, 1, 8), train_days=7, delay_days=7, test_days=7)
    stamps = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta([0, 10, 20, 22, 23, 27], unit="D")
    frame = pd.DataFrame(
        {"timestamp": stamps, SCENARIO_COLUMN: ["x", "none", "x", "x", "y", "none"], LABEL_COLUMN: [1, 0, 1, 1, 1, 0]}
    )
    kept = without_scenario(frame, "x", window)  # test window: [2026-01-22, 2026-01-29)
    assert list(kept[SCENARIO_COLUMN]) == ["none", "x", "y", "none"]
    assert kept["timestamp"].iloc[1] == stamps[3]
    with pytest.raises(ValueError, match="no 'z' rows"):
        without_scenario(frame, "z", window)


def test_operating_curves_give_precision_recall_fpr_and_expected_cost_per_threshold() -> None:
    from training.evaluate import operating_curves

    y = np.array([1, 0, 1, 0])
    curves = operating_curves(y, np.array([0.9, 0.8, 0.7, 0.1]), np.array([100.0, 10.0, 50.0, 10.0]), review_cost=5.0)
    assert list(curves["threshold"]) == [0.9, 0.8, 0.7, 0.1]
    assert list(curves["precision"]) == pytest.approx([1, 0.5, 2 / 3, 0.5])
    assert list(curves["recall"]) == pytest.approx([0.5, 0.5, 1, 1])
    assert list(curves["fpr"]) == pytest.approx([0, 0.5, 0.5, 1])
    assert list(curves["expected_cost"]) == pytest.approx([50 + 5, 50 + 10, 15, 20])


def test_the_max_blend_keeps_either_models_top_tail() -> None:
    xgb = np.array([0.9, 0.1, 0.2, 0.3])
    ae = np.array([0.0, 0.99, 0.1, 0.2])
    assert list(max_blend(xgb, ae)) == pytest.approx([1.0, 0.99, 0.5, 0.75])


def test_operating_points_store_fixed_fpr_rows_the_chosen_threshold_and_the_least_cost() -> None:
    from training.evaluate import operating_points

    y = np.array([1, 0, 1, 0])
    points = operating_points(y, np.array([0.9, 0.8, 0.7, 0.1]), np.array([100.0, 10.0, 50.0, 10.0]), threshold=0.75)
    assert [p["fpr_at_most"] for p in points["operating_points"]] == [0.001, 0.005, 0.01, 0.02, 0.05]
    assert all(p["threshold"] == 0.9 and p["false_positive_rate"] == 0 for p in points["operating_points"])
    chosen = points["threshold_point"]  # alert at >= 0.75: the rows scored 0.9 and 0.8
    assert (chosen["threshold"], chosen["precision"], chosen["recall"]) == (0.8, 0.5, 0.5)
    assert points["least_cost_point"]["threshold"] == 0.7  # both frauds caught for three reviews
