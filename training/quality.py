"""``fraudctl evaluate``: judging detection quality one way for every before/after figure.

- ``judge_scores``: a backtest's scores file - AP, ROC-AUC, recall at fixed false-positive rates overall and per
  scenario - next to the standard baseline (``training.baseline``) on the same window;
- ``evaluate_novel``: fraud the model never saw - one scenario removed from training and feature history, then its
  recall at fixed FPRs with the chosen ensemble, XGBoost alone, the autoencoder alone, and the chosen ensemble with
  the anomaly review lane worked first (the autoencoder's share).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score
from tqdm.auto import tqdm

from cluster.config import Settings
from cluster.datasets import read_transactions
from cluster.schema import GENUINE_SCENARIO, LABEL_COLUMN, SCENARIO_COLUMN
from training.backtest import BacktestWindow, backtest_window
from training.baseline import baseline_scores
from training.data import load_profiles, read_labelled
from training.ensemble import DEFAULT_XGB_WEIGHT
from training.policy import level_summary

FIXED_FPRS = (0.005, 0.01, 0.02)


def threshold_at_fpr(y: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """The lowest score that flags at most ``fpr`` of the genuine rows (alert when score > it)."""
    genuine = np.sort(np.asarray(scores, np.float64)[np.asarray(y) == 0])
    if not len(genuine):
        return float("-inf")
    return float(genuine[min(len(genuine) - 1, int(np.ceil(len(genuine) * (1 - fpr))) - 1)])


def recall_at_fpr(y: np.ndarray, scores: np.ndarray, fpr: float, among: np.ndarray | None = None) -> float:
    """Share of the frauds (``among`` selects a subset, e.g. one scenario) scored above the ``fpr`` threshold."""
    y, scores = np.asarray(y), np.asarray(scores, np.float64)
    fraud = (y == 1) if among is None else ((y == 1) & np.asarray(among))
    if not fraud.any():
        return float("nan")
    return float((scores[fraud] > threshold_at_fpr(y, scores, fpr)).mean())


def ranking_quality(frame: pd.DataFrame, scores: np.ndarray, fprs: tuple[float, ...] = FIXED_FPRS) -> dict[str, Any]:
    """AP, ROC-AUC, recall at each FPR, and per scenario (when the frame has ``fraud_scenario``)."""
    y = frame[LABEL_COLUMN].to_numpy().astype(int)
    out: dict[str, Any] = {
        "rows": int(len(y)),
        "frauds": int(y.sum()),
        "average_precision": round(float(average_precision_score(y, scores)), 4),
        "roc_auc": round(float(roc_auc_score(y, scores)), 4),
        "recall_at_fpr": {f"{f:g}": round(recall_at_fpr(y, scores, f), 4) for f in fprs},
    }
    if SCENARIO_COLUMN in frame.columns:
        scenario = frame[SCENARIO_COLUMN].to_numpy()
        out["recall_at_1pct_fpr_by_scenario"] = {
            str(name): round(recall_at_fpr(y, scores, 0.01, scenario == name), 4)
            for name in sorted(set(scenario[y == 1]) - {GENUINE_SCENARIO})
        }
    return out


def judge_scores(data: Path, scores_csv: Path, window: BacktestWindow) -> dict[str, Any]:
    """Our scores file and the standard baseline on the same test window, side by side."""
    transactions = read_transactions(data, labelled=True)
    transactions = transactions[transactions["timestamp"] < window.test_end].reset_index(drop=True)
    ours = pd.read_csv(scores_csv, dtype={"transaction_id": str})
    base = baseline_scores(
        transactions,
        train=(window.start, window.train_end),
        test=(window.test_start, window.test_end),
        delay_days=window.delay_days,
    )
    indexed = transactions.set_index("transaction_id")
    ours_quality = ranking_quality(indexed.loc[ours["transaction_id"]], ours["fraud_score"].to_numpy())
    base_quality = ranking_quality(indexed.loc[base["transaction_id"]], base["fraud_score"].to_numpy())
    return {
        "ours": ours_quality,
        "baseline": base_quality,
        "ap_ratio_to_baseline": round(ours_quality["average_precision"] / base_quality["average_precision"], 4),
        "auc_difference": round(ours_quality["roc_auc"] - base_quality["roc_auc"], 4),
    }


def without_scenario(transactions: pd.DataFrame, scenario: str, window: BacktestWindow) -> pd.DataFrame:
    """The scenario's rows leave everything before the test window (training rows and feature history alike), so
    neither the model nor a label-driven feature has seen it; in the test window it stays."""
    if SCENARIO_COLUMN not in transactions.columns:
        raise ValueError(f"--novel needs the {SCENARIO_COLUMN} column (simulator output)")
    if scenario not in set(transactions[SCENARIO_COLUMN]):
        raise ValueError(f"--novel: no {scenario!r} rows; the data holds {sorted(set(transactions[SCENARIO_COLUMN]))}")
    keep = (transactions[SCENARIO_COLUMN] != scenario) | (transactions["timestamp"] >= window.test_start)
    return transactions[keep.to_numpy()].reset_index(drop=True)


def evaluate_novel(
    settings: Settings, data: Path, window: BacktestWindow, scenario: str, trials: int | None = None
) -> dict[str, Any]:
    """Train without ``scenario``; its recall at fixed FPRs among the genuine test rows, with and without the
    autoencoder."""
    users, merchants = load_profiles(data)
    transactions = without_scenario(read_labelled(data), scenario, window)
    run = backtest_window(
        settings, transactions, window=window, users=users, merchants=merchants, source=str(data), trials=trials
    )
    frame, scores = run.test.frame, run.scores
    y = frame[LABEL_COLUMN].to_numpy().astype(int)
    novel = frame[SCENARIO_COLUMN].to_numpy() == scenario
    if not novel.any():
        raise ValueError(f"--novel: no {scenario!r} fraud in the test window")
    xgb_score, ae_score = scores["xgb_score"].to_numpy(), scores["ae_score"].to_numpy()
    variants = {
        "chosen_ensemble": scores["fraud_score"].to_numpy(),
        "xgboost_only": xgb_score,
        "autoencoder_only": ae_score,
        f"fixed_{DEFAULT_XGB_WEIGHT:g}_blend": DEFAULT_XGB_WEIGHT * xgb_score + (1 - DEFAULT_XGB_WEIGHT) * ae_score,
        "max_blend": max_blend(xgb_score, ae_score),
    }
    policy = run.fitted.bundle.ensemble.policy
    lane_level = policy.rolling_lane_levels(ae_score, frame["timestamp"].values)
    in_lane = np.asarray(policy.in_anomaly_lane(ae_score, lane_level), dtype=bool)
    if policy.anomaly_review is not None:
        variants["with_anomaly_lane"] = lane_first(variants["chosen_ensemble"], ae_score, in_lane)
    recall = {
        name: {f"{f:g}": round(recall_at_fpr(y, values, f, novel), 4) for f in FIXED_FPRS}
        for name, values in variants.items()
    }
    known = ~novel | (y == 0)
    known_ap = {
        name: round(float(average_precision_score(y[known], values[known])), 4) for name, values in variants.items()
    }
    known_recall = {name: round(recall_at_fpr(y, values, 0.01, ~novel), 4) for name, values in variants.items()}
    ensemble = run.fitted.details["ensemble"]
    return {
        "scenario": scenario,
        "test_frauds": int(novel.sum()),
        "ae_weight": ensemble["ae_weight"],
        "recall_at_fpr": recall,
        "known_fraud_average_precision": known_ap,
        "known_fraud_recall_at_1pct": known_recall,
        "autoencoder_share_at_1pct": round(recall["chosen_ensemble"]["0.01"] - recall["xgboost_only"]["0.01"], 4),
        "anomaly_lane_share_at_1pct": round(recall["with_anomaly_lane"]["0.01"] - recall["xgboost_only"]["0.01"], 4)
        if "with_anomaly_lane" in recall
        else None,
        "anomaly_lane": {
            "level": policy.anomaly_review,
            "live_level": level_summary(lane_level),
            "test_genuine_share": round(float(in_lane[y == 0].mean()), 5),
            "novel_recall": round(float(in_lane[novel].mean()), 4),
            "novel_alerted_or_reviewed": round(
                float((in_lane | policy.is_fraud(variants["chosen_ensemble"]))[novel].mean()), 4
            ),
        }
        if policy.anomaly_review is not None
        else None,
        "known_fraud_quality": ranking_quality(frame.loc[known], variants["chosen_ensemble"][known]),
    }


def lane_first(fraud_score: np.ndarray, ae_score: np.ndarray, in_lane: np.ndarray) -> np.ndarray:
    """The lane's rows first (by anomaly score), then the rest by fraud score: recall at an FPR of this order counts
    the lane's genuine rows against the same budget. It assumes the lane's cases are worked before the others; the
    review queue (``GET /api/cases``) lists the lane's open cases first for that reason."""
    return np.where(in_lane, 1.0 + np.asarray(ae_score, np.float64), np.asarray(fraud_score, np.float64))


def max_blend(xgb_score: np.ndarray, ae_score: np.ndarray) -> np.ndarray:
    """The larger of XGBoost's rank among the scored rows (0..1) and the autoencoder's score (already a quantile
    among genuine rows): a row either model puts in its top tail is in the blend's top tail."""
    ranks = pd.Series(np.asarray(xgb_score, np.float64)).rank(method="max").to_numpy() / max(len(xgb_score), 1)
    return np.maximum(ranks, np.asarray(ae_score, np.float64))


def run_evaluate(
    settings: Settings,
    *,
    data: Path,
    window: BacktestWindow,
    scores: Path | None = None,
    novel: list[str] | None = None,
    trials: int | None = None,
    anomaly_review_rate: float | None = None,
) -> dict[str, Any]:
    """What ``fraudctl evaluate`` prints: the scores file judged against the baseline, and each novel scenario
    (trained with the anomaly review lane at ``anomaly_review_rate``, by default the settings' rate; 0 for none)."""
    out: dict[str, Any] = {}
    if scores is not None:
        out["scores"] = judge_scores(data, scores, window)
    if novel:
        if novel == ["all"]:
            labelled = read_transactions(data, labelled=True)
            novel = sorted(set(labelled.get(SCENARIO_COLUMN, pd.Series(dtype=str))) - {GENUINE_SCENARIO})
        out["novel"] = {}
        for scenario in tqdm(novel, desc="novel scenarios", unit="scenario"):
            out["novel"][scenario] = evaluate_novel(
                settings
                if anomaly_review_rate is None
                else settings.model_copy(update={"anomaly_review_rate": anomaly_review_rate}),
                data,
                window,
                scenario,
                trials,
            )
    if not out:
        raise ValueError("evaluate: give --scores FILE and/or --novel SCENARIO (or all)")
    return out
