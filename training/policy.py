"""The risk-level policy, in one place: a calibrated score and the chosen cut points -> LOW/MEDIUM/HIGH, is_fraud.

An alert (``is_fraud``) is exactly a HIGH decision, so the HTTP answer, the SNS alert and the evaluation report
can never disagree; MEDIUM is the review band below the alert threshold. The anomaly review lane also sends to
review (MEDIUM, never HIGH) a row the autoencoder finds unusual beyond ``anomaly_review``, whatever its fraud score:
fraud of a kind nobody has labelled yet scores low with a supervised model, and an analyst's decision on it becomes
the label that teaches the next one.

A level fixed at training cannot hold the lane's budget once traffic drifts (a cold feature state, a season): so a
lane trained with a rate (``anomaly_review_rate``) keeps its level on recent traffic instead, the rate's quantile of
the newest rows' anomaly scores, never below the trained level, and closed while too few rows have been seen to
hold the budget. ``live_lane_level`` is that rule; serving keeps the rows (``serve.monitoring``), the offline
evaluation replays it over a period in time order (``rolling_lane_levels``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LOW, MEDIUM, HIGH = "LOW", "MEDIUM", "HIGH"
RISK_LEVELS = (LOW, MEDIUM, HIGH)
LANE_WINDOW_REVIEWS = 100  # the live level's window holds this many rows the rate would review: a steady quantile
LANE_MIN_REVIEWS = 20  # ... and the lane stays closed until the window holds this many
LANE_REFRESHES_PER_WINDOW = 50  # the level moves this often per window of rows, in serving and in the replay


@dataclass(frozen=True)
class RiskPolicy:
    """Cut points on the calibrated fraud score: ``medium <= threshold``; HIGH (and is_fraud) from ``threshold``;
    ``anomaly_review``: the anomaly score from which a row is at least MEDIUM (None: no lane), the level set at
    training and the live level's floor; ``anomaly_review_rate``: the share of rows the lane may review, which the
    live level holds (None: the trained level is applied as it is, as in bundles from before the live level)."""

    threshold: float
    medium: float
    anomaly_review: float | None = None
    anomaly_review_rate: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.medium <= self.threshold <= 1.0:
            raise ValueError(f"risk policy needs 0 <= medium <= threshold <= 1, got {self}")
        if self.anomaly_review is not None and not 0.0 <= self.anomaly_review <= 1.0:
            raise ValueError(f"risk policy needs 0 <= anomaly_review <= 1, got {self}")
        if self.anomaly_review_rate is not None and not 0.0 < self.anomaly_review_rate < 1.0:
            raise ValueError(f"risk policy needs 0 < anomaly_review_rate < 1, got {self}")

    @property
    def live_lane(self) -> bool:
        return self.anomaly_review is not None and self.anomaly_review_rate is not None

    def lane_window_rows(self) -> int:
        """How many of the newest rows the live level is the quantile of (0 without a live lane)."""
        return math.ceil(LANE_WINDOW_REVIEWS / self.anomaly_review_rate) if self.live_lane else 0

    def lane_min_rows(self) -> int:
        """How many rows the live level needs before the lane opens (0 without a live lane)."""
        return math.ceil(LANE_MIN_REVIEWS / self.anomaly_review_rate) if self.live_lane else 0

    def lane_block_rows(self) -> int:
        """How many new rows the live level waits for before it moves (1 without a live lane)."""
        return max(1, self.lane_window_rows() // LANE_REFRESHES_PER_WINDOW)

    def live_lane_level(self, recent: np.ndarray) -> float | None:
        """The lane's level given the newest rows' anomaly scores (``recent``, at most ``lane_window_rows``): the
        rate's quantile of them, never below the trained level; ``math.inf`` (closed) while they are fewer than
        the rate needs to review ``LANE_MIN_REVIEWS`` rows. Without a live lane, the trained level (None: no lane)."""
        if not self.live_lane:
            return self.anomaly_review
        recent = np.asarray(recent, dtype=np.float64)
        if len(recent) < self.lane_min_rows():
            return math.inf
        return max(self.anomaly_review, float(np.quantile(recent, 1.0 - self.anomaly_review_rate)))

    def rolling_lane_levels(self, anomaly_scores: np.ndarray, times: np.ndarray | None = None) -> np.ndarray:
        """The level each row met, replaying ``live_lane_level`` over a period of rows as serving would have seen
        them (ordered by ``times``, else as given): each block of ``lane_block_rows`` gets the level of the window
        before it, as serving moves its level once per block."""
        scores = np.asarray(anomaly_scores, dtype=np.float64)
        if not self.live_lane:
            return np.full(len(scores), math.inf if self.anomaly_review is None else self.anomaly_review)
        order = np.argsort(times, kind="stable") if times is not None else np.arange(len(scores))
        ordered, levels = scores[order], np.empty(len(scores))
        window, block = self.lane_window_rows(), self.lane_block_rows()
        for start in range(0, len(ordered), block):
            levels[start : start + block] = self.live_lane_level(ordered[max(0, start - window) : start])
        out = np.empty(len(scores))
        out[order] = levels
        return out

    def is_fraud(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) >= self.threshold

    def in_anomaly_lane(
        self, anomaly_scores: np.ndarray | None, level: float | np.ndarray | None = None
    ) -> np.ndarray | bool:
        """Rows the lane sends to review at ``level`` (a live level, per row or one; by default the trained one);
        False everywhere without a lane or without anomaly scores."""
        if self.anomaly_review is None or anomaly_scores is None:
            return False
        return np.asarray(anomaly_scores) >= (self.anomaly_review if level is None else level)

    def lane_reviews(
        self, scores: np.ndarray, anomaly_scores: np.ndarray | None, level: float | np.ndarray | None = None
    ) -> np.ndarray:
        """The rows the lane adds to review: in the lane at ``level`` and below the alert threshold."""
        return np.asarray(self.in_anomaly_lane(anomaly_scores, level), dtype=bool) & ~self.is_fraud(scores)

    def risk_levels(
        self,
        scores: np.ndarray,
        anomaly_scores: np.ndarray | None = None,
        lane_level: float | np.ndarray | None = None,
    ) -> np.ndarray:
        """One of RISK_LEVELS per score (object array, vectorised); with ``anomaly_scores``, the lane's rows (at
        ``lane_level``, see ``in_anomaly_lane``) are at least MEDIUM."""
        index = np.asarray(scores >= self.medium, dtype=np.int8) + np.asarray(scores >= self.threshold, dtype=np.int8)
        index = np.maximum(index, np.asarray(self.in_anomaly_lane(anomaly_scores, lane_level), dtype=np.int8))
        return np.asarray(RISK_LEVELS, dtype=object)[index]

    def lane_summary(
        self,
        y: np.ndarray,
        scores: np.ndarray,
        anomaly_scores: np.ndarray,
        lane_level: float | np.ndarray | None = None,
    ) -> dict[str, Any] | None:
        """What the lane adds on labelled rows at ``lane_level`` (see ``in_anomaly_lane``): the rows it sends to
        review below the alert threshold, their share of the genuine rows, the frauds among them, and recall alerted
        or reviewed (None without a lane)."""
        if self.anomaly_review is None:
            return None
        y = np.asarray(y)
        alerted = self.is_fraud(scores)
        reviewed = self.lane_reviews(scores, anomaly_scores, lane_level)
        return {
            "level": self.anomaly_review,
            "rate": self.anomaly_review_rate,
            "live_level": None if lane_level is None else level_summary(np.broadcast_to(lane_level, np.shape(scores))),
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
        lane, rate = values.get("anomaly_review"), values.get("anomaly_review_rate")  # absent in older bundles
        return cls(
            threshold=float(values["threshold"]),
            medium=float(values["medium"]),
            anomaly_review=None if lane is None else float(lane),
            anomaly_review_rate=None if rate is None else float(rate),
        )


def level_summary(levels: np.ndarray) -> dict[str, float | None]:
    """The live levels a period's rows met: the share that met a closed lane and the median open level."""
    levels = np.asarray(levels, dtype=np.float64)
    opened = np.isfinite(levels)
    return {
        "closed_share": round(float(1.0 - opened.mean()), 5) if len(levels) else None,
        "median_level": round(float(np.median(levels[opened])), 6) if opened.any() else None,
    }
