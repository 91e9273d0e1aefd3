"""The risk-level policy, in one place: a calibrated score and the chosen cut points -> LOW/MEDIUM/HIGH, is_fraud.

An alert (``is_fraud``) is exactly a HIGH decision, so the HTTP answer, the SNS alert and the evaluation report
can never disagree; MEDIUM is the review band below the alert threshold. The anomaly review lane also sends to
review (MEDIUM, never HIGH) a row the autoencoder finds unusual beyond ``anomaly_review``, whatever its fraud score:
fraud of a kind nobody has labelled yet scores low with a supervised model, and an analyst's decision on it becomes
the label that teaches the next one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LOW, MEDIUM, HIGH = "LOW", "MEDIUM", "HIGH"
RISK_LEVELS = (LOW, MEDIUM, HIGH)


@dataclass(frozen=True)
class RiskPolicy:
    """Cut points on the calibrated fraud score: ``medium <= threshold``; HIGH (and is_fraud) from ``threshold``;
    ``anomaly_review``: the anomaly score from which a row is at least MEDIUM (None: no lane)."""

    threshold: float
    medium: float
    anomaly_review: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.medium <= self.threshold <= 1.0:
            raise ValueError(f"risk policy needs 0 <= medium <= threshold <= 1, got {self}")
        if self.anomaly_review is not None and not 0.0 <= self.anomaly_review <= 1.0:
            raise ValueError(f"risk policy needs 0 <= anomaly_review <= 1, got {self}")

    def is_fraud(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) >= self.threshold

    def in_anomaly_lane(self, anomaly_scores: np.ndarray | None) -> np.ndarray | bool:
        """Rows the lane sends to review (False everywhere without a lane or without anomaly scores)."""
        if self.anomaly_review is None or anomaly_scores is None:
            return False
        return np.asarray(anomaly_scores) >= self.anomaly_review

    def risk_levels(self, scores: np.ndarray, anomaly_scores: np.ndarray | None = None) -> np.ndarray:
        """One of RISK_LEVELS per score (object array, vectorised); with ``anomaly_scores``, the lane's rows are at
        least MEDIUM."""
        index = np.asarray(scores >= self.medium, dtype=np.int8) + np.asarray(scores >= self.threshold, dtype=np.int8)
        index = np.maximum(index, np.asarray(self.in_anomaly_lane(anomaly_scores), dtype=np.int8))
        return np.asarray(RISK_LEVELS, dtype=object)[index]

    def lane_summary(self, y: np.ndarray, scores: np.ndarray, anomaly_scores: np.ndarray) -> dict[str, Any] | None:
        """What the lane adds on labelled rows: the rows it sends to review below the alert threshold, their share
        of the genuine rows, the frauds among them, and recall alerted or reviewed (None without a lane)."""
        if self.anomaly_review is None:
            return None
        y = np.asarray(y)
        alerted = self.is_fraud(scores)
        reviewed = np.asarray(self.in_anomaly_lane(anomaly_scores), dtype=bool) & ~alerted
        return {
            "level": self.anomaly_review,
            "rows_below_alert": int(reviewed.sum()),
            "genuine_share": round(float(reviewed[y == 0].mean()), 6),
            "frauds_below_alert": int(((y == 1) & ~alerted).sum()),
            "frauds_reviewed": int(reviewed[y == 1].sum()),
            "alerted_or_reviewed_recall": round(float((alerted | reviewed)[y == 1].mean()), 5),
        }

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RiskPolicy":
        lane = values.get("anomaly_review")  # absent in bundles from before the lane
        return cls(
            threshold=float(values["threshold"]),
            medium=float(values["medium"]),
            anomaly_review=None if lane is None else float(lane),
        )
