"""Evaluation: the metrics of a scored, labelled period and the Markdown + PNG report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from cluster.schema import GENUINE_SCENARIO, LABEL_COLUMN, SCENARIO_COLUMN
from training.ensemble import REVIEW_COST
from training.policy import RiskPolicy

CARDS_PER_DAY = 100


def card_precision_at_k(frame: pd.DataFrame, scores: np.ndarray, k: int = CARDS_PER_DAY) -> dict[str, float]:
    """Per day: of the k cards with the highest score that day, the share that had a fraud that day."""
    cards = pd.DataFrame(
        {
            "day": frame["timestamp"].dt.floor("D").to_numpy(),
            "card": frame["user_id"].to_numpy(),
            "score": scores,
            "fraud": frame[LABEL_COLUMN].to_numpy(),
        }
    )
    per_card = cards.groupby(["day", "card"], sort=False).agg(score=("score", "max"), fraud=("fraud", "max"))
    top = per_card.sort_values("score", ascending=False, kind="stable").groupby(level="day", sort=True).head(k)
    per_day = top.groupby(level="day", sort=True)["fraud"].sum() / k
    return {str(day.date()): round(float(value), 4) for day, value in per_day.items()}


def evaluate(
    frame: pd.DataFrame, scores: np.ndarray, policy: RiskPolicy, anomaly_scores: np.ndarray | None = None
) -> dict[str, Any]:
    """Ranking metrics, the decision at the policy's threshold, and recall per fraud scenario; with
    ``anomaly_scores``, the risk levels include the anomaly review lane at the level serving would have kept over
    the period (``RiskPolicy.rolling_lane_levels``), and what it adds is reported."""
    y = frame[LABEL_COLUMN].to_numpy().astype(int)
    if y.min() == y.max():
        raise ValueError("is_fraud: the evaluated period holds only one class; need frauds and genuine rows")
    lane_level = (
        None
        if anomaly_scores is None
        else policy.rolling_lane_levels(anomaly_scores, frame["timestamp"].values if "timestamp" in frame else None)
    )
    predicted = policy.is_fraud(scores)
    precision, recall, f1, _ = precision_recall_fscore_support(y, predicted, average="binary", zero_division=0)
    tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    cp_per_day = card_precision_at_k(frame, scores)
    metrics: dict[str, Any] = {
        "rows": int(len(y)),
        "frauds": int(y.sum()),
        "roc_auc": round(float(roc_auc_score(y, scores)), 5),
        "average_precision": round(float(average_precision_score(y, scores)), 5),
        "threshold": policy.threshold,
        "precision": round(float(precision), 5),
        "recall": round(float(recall), 5),
        "f1": round(float(f1), 5),
        "false_positive_rate": round(float(fp / max(fp + tn, 1)), 6),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "card_precision_at_100": round(float(np.mean(list(cp_per_day.values()))), 4),
        "card_precision_at_100_per_day": cp_per_day,
        "risk_levels": {
            level: int(n)
            for level, n in zip(*np.unique(policy.risk_levels(scores, anomaly_scores, lane_level), return_counts=True))
        },
    }
    lane = policy.lane_reviews(scores, anomaly_scores, lane_level)
    if anomaly_scores is not None and policy.anomaly_review is not None:
        metrics["anomaly_review"] = policy.lane_summary(y, scores, anomaly_scores, lane_level)
    if SCENARIO_COLUMN in frame.columns:
        metrics["recall_by_scenario"] = recall_by_scenario(frame, scores, predicted, lane)
    amounts = frame["amount"].to_numpy(np.float64) if "amount" in frame.columns else np.zeros(len(y))
    metrics.update(operating_points(y, scores, amounts, policy.threshold))
    return metrics


def _lane_level_text(lane: dict[str, Any]) -> str:
    live = lane.get("live_level")
    if lane.get("rate") is None or live is None:
        return f"Its level is {lane['level']:.5g}, set on the validation period."
    median = "never open" if live["median_level"] is None else f"median level {live['median_level']:.5g}"
    return (
        f"Its level follows the newest {lane['rate']:.2%} of anomaly scores as serving keeps it, replayed over the "
        f"period in time order (floor {lane['level']:.5g}, set on the validation period): {median}, closed for "
        f"{live['closed_share']:.2%} of the rows while too few had been seen."
    )


def operating_points(y: np.ndarray, scores: np.ndarray, amounts: np.ndarray, threshold: float) -> dict[str, Any]:
    """The curves at fixed false-positive rates, at ``threshold`` and where the least expected cost sits: small
    enough to store with a version, so the Models tab can show the trade-off the chosen threshold makes."""
    curves = operating_curves(y, scores, amounts)

    def point(i: int) -> dict[str, float]:
        return {
            "threshold": round(float(curves["threshold"][i]), 6),
            "precision": round(float(curves["precision"][i]), 4),
            "recall": round(float(curves["recall"][i]), 4),
            "false_positive_rate": round(float(curves["fpr"][i]), 6),
            "expected_cost": round(float(curves["expected_cost"][i]), 2),
        }

    levels = (0.001, 0.005, 0.01, 0.02, 0.05)
    return {
        "operating_points": [
            {"fpr_at_most": level, **point(_curve_rows(curves["fpr"], (level,))[0])} for level in levels
        ],
        "least_cost_point": point(int(np.argmin(curves["expected_cost"]))),
        "threshold_point": point(max(int(np.searchsorted(-curves["threshold"], -threshold, side="right")) - 1, 0)),
    }


def recall_by_scenario(
    frame: pd.DataFrame, scores: np.ndarray, predicted: np.ndarray, reviewed: np.ndarray | None = None
) -> dict[str, dict[str, float]]:
    """Recall at the threshold per scenario, and the AP of that scenario's frauds ranked among all genuine rows; with
    ``reviewed`` (the anomaly lane's rows below the threshold), also the share alerted or sent to review."""
    fraud = frame[LABEL_COLUMN].to_numpy() == 1
    scenario = frame[SCENARIO_COLUMN].to_numpy()
    out = {}
    for name in sorted(set(scenario[fraud]) - {GENUINE_SCENARIO}):
        mine = fraud & (scenario == name)
        ranked = mine | ~fraud
        out[str(name)] = {
            "frauds": int(mine.sum()),
            "recall": round(float(predicted[mine].mean()), 4),
            "average_precision": round(float(average_precision_score(mine[ranked], scores[ranked])), 4),
        }
        if reviewed is not None and reviewed.any():
            out[str(name)]["alerted_or_reviewed"] = round(float((predicted | reviewed)[mine].mean()), 4)
    return out


def operating_curves(
    y: np.ndarray, scores: np.ndarray, amounts: np.ndarray, review_cost: float = REVIEW_COST
) -> dict[str, np.ndarray]:
    """Per candidate threshold (alert when score >= it): precision, recall, false-positive rate and the expected
    cost (missed fraud amount + ``review_cost`` per alert)."""
    order = np.argsort(-scores, kind="stable")
    s, fraud = scores[order], y[order].astype(np.float64)
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    alerts = np.arange(1, len(s) + 1)[last_of_tie]
    caught = np.cumsum(fraud)[last_of_tie]
    caught_amount = np.cumsum(amounts[order] * fraud)[last_of_tie]
    frauds, genuine = max(fraud.sum(), 1.0), max(len(y) - fraud.sum(), 1.0)
    return {
        "threshold": s[last_of_tie],
        "precision": caught / alerts,
        "recall": caught / frauds,
        "fpr": (alerts - caught) / genuine,
        "expected_cost": float((amounts * y).sum()) - caught_amount + review_cost * alerts,
    }


def _plots(out_dir: Path, y: np.ndarray, scores: np.ndarray, threshold: float, amounts: np.ndarray) -> list[str]:
    matplotlib.use("Agg")

    fig, (roc_ax, pr_ax, hist_ax, op_ax) = plt.subplots(1, 4, figsize=(21, 4.5))
    fpr, tpr, _ = roc_curve(y, scores)
    roc_ax.plot(fpr, tpr)
    roc_ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    roc_ax.set(
        title=f"ROC (AUC {roc_auc_score(y, scores):.3f})", xlabel="false-positive rate", ylabel="true-positive rate"
    )
    precision, recall, _ = precision_recall_curve(y, scores)
    pr_ax.plot(recall, precision)
    pr_ax.set(
        title=f"Precision-recall (AP {average_precision_score(y, scores):.3f})", xlabel="recall", ylabel="precision"
    )
    bins = np.linspace(0, 1, 51)
    hist_ax.hist(scores[y == 0], bins=bins, alpha=0.6, label="genuine", density=True, log=True)
    hist_ax.hist(scores[y == 1], bins=bins, alpha=0.6, label="fraud", density=True, log=True)
    hist_ax.axvline(threshold, color="black", linestyle="--", label="threshold")
    hist_ax.set(title="fraud_score by class", xlabel="fraud_score", ylabel="density (log)")
    hist_ax.legend()
    curves = operating_curves(y, scores, amounts)
    for name in ("precision", "recall", "fpr"):
        op_ax.plot(curves["threshold"], curves[name], label=name)
    op_ax.axvline(threshold, color="black", linestyle="--", label="chosen threshold")
    op_ax.set(title="Operating point", xlabel="threshold (fraud_score)", ylabel="rate")
    cost_ax = op_ax.twinx()
    cost_ax.plot(curves["threshold"], curves["expected_cost"], color="grey", linestyle=":", label="expected cost")
    cost_ax.set(ylabel=f"expected cost (missed fraud + {REVIEW_COST:g} per alert)")
    op_ax.legend(loc="center left")
    fig.tight_layout()
    name = "evaluation.png"
    fig.savefig(out_dir / name, dpi=90)
    plt.close(fig)
    return [name]


def write_report(
    out_dir: Path,
    *,
    title: str,
    frame: pd.DataFrame,
    scores: np.ndarray,
    metrics: dict[str, Any],
    policy: RiskPolicy,
    notes: list[str],
    details: dict[str, Any],
) -> Path:
    """``report.md`` and its PNG in ``out_dir``; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    y = frame[LABEL_COLUMN].to_numpy().astype(int)
    amounts = frame["amount"].to_numpy(np.float64) if "amount" in frame.columns else np.zeros(len(y))
    images = _plots(out_dir, y, scores, policy.threshold, amounts)
    curves = operating_curves(y, scores, amounts)
    least = int(np.argmin(curves["expected_cost"]))
    cm = metrics["confusion_matrix"]
    lines = [
        f"# {title}",
        "",
        *[f"- {note}" for note in notes],
        "",
        "## Test period",
        "",
        "| metric | value |",
        "|---|---|",
        *[
            f"| {name} | {metrics[name]} |"
            for name in (
                "rows",
                "frauds",
                "roc_auc",
                "average_precision",
                "threshold",
                "precision",
                "recall",
                "f1",
                "false_positive_rate",
                "card_precision_at_100",
            )
        ],
        "",
        f"Operating point: the policy's threshold {policy.threshold:.4g} was chosen on the validation "
        f"period's scores (see the ensemble's objective above), never on this period. On this period the "
        f"least expected cost would sit at {curves['threshold'][least]:.4g} (recall "
        f"{curves['recall'][least]:.3f}, FPR {curves['fpr'][least]:.4f}); the curves are in the figure.",
        "",
        "| threshold | precision | recall | FPR | expected cost |",
        "|---|---|---|---|---|",
        *[
            f"| {curves['threshold'][i]:.4g} | {curves['precision'][i]:.3f} | {curves['recall'][i]:.3f} | "
            f"{curves['fpr'][i]:.4f} | {curves['expected_cost'][i]:.0f} |"
            for i in _curve_rows(curves["fpr"])
        ],
        "",
        "Confusion matrix at the threshold:",
        "",
        "| | predicted genuine | predicted fraud |",
        "|---|---|---|",
        f"| genuine | {cm['tn']} | {cm['fp']} |",
        f"| fraud | {cm['fn']} | {cm['tp']} |",
        "",
    ]
    lane = metrics.get("anomaly_review")
    if lane:
        lines += [
            "## Anomaly review lane",
            "",
            f"Rows below the alert threshold whose anomaly score reaches the lane's level go to review: "
            f"{lane['rows_below_alert']} here, {lane['genuine_share']:.4%} of the genuine rows, "
            f"{lane['frauds_reviewed']} frauds among them; alerted or reviewed, recall "
            f"{lane['alerted_or_reviewed_recall']}. " + _lane_level_text(lane),
            "",
        ]
    if metrics.get("recall_by_scenario"):
        reviewed = lane is not None and lane["rows_below_alert"] > 0
        lines += [
            "## Recall per fraud scenario",
            "",
            "| scenario | frauds | recall | AP vs all genuine |" + (" alerted or reviewed |" if reviewed else ""),
            "|---|---|---|---|" + ("---|" if reviewed else ""),
            *[
                f"| {name} | {v['frauds']} | {v['recall']} | {v['average_precision']} |"
                + (f" {v.get('alerted_or_reviewed', v['recall'])} |" if reviewed else "")
                for name, v in metrics["recall_by_scenario"].items()
            ],
            "",
        ]
    lines += [
        "## Card Precision@100 per day",
        "",
        "| day | CP@100 |",
        "|---|---|",
        *[f"| {day} | {value} |" for day, value in metrics["card_precision_at_100_per_day"].items()],
        "",
    ]
    lines += [
        *[f"![{image}]({image})" for image in images],
        "",
        "## Details",
        "",
        "```json",
        json.dumps(details, indent=2, default=str),
        "```",
        "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _curve_rows(fpr: np.ndarray, levels: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.05)) -> list[int]:
    """Curve positions of the last threshold at or below each false-positive rate."""
    return sorted({max(int(np.searchsorted(fpr, level, side="right")) - 1, 0) for level in levels})
