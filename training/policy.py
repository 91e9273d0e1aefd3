"""The risk-level policy, in one place: a calibrated score and the chosen cut points -> LOW/MEDIUM/HIGH, is_fraud.

An alert (``is_fraud``) is exactly a HIGH decision, so the HTTP answer, the SNS alert and the evaluation report
can never disagree; MEDIUM is the review band below the alert threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LOW, MEDIUM, HIGH = "LOW", "MEDIUM", "HIGH"
RISK_LEVELS = (LOW, MEDIUM, HIGH)


@dataclass(frozen=True)
class RiskPolicy:
    """Cut points on the calibrated fraud score: ``medium <= threshold``; HIGH (and is_fraud) from ``threshold``."""

    threshold: float
    medium: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.medium <= self.threshold <= 1.0:
            raise ValueError(f"risk policy needs 0 <= medium <= threshold <= 1, got {self}")

    def is_fraud(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) >= self.threshold

    def risk_levels(self, scores: np.ndarray) -> np.ndarray:
        """One of RISK_LEVELS per score (object array, vectorised)."""
        index = np.asarray(scores >= self.medium, dtype=np.int8) + np.asarray(scores >= self.threshold, dtype=np.int8)
        return np.asarray(RISK_LEVELS, dtype=object)[index]

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RiskPolicy":
        return cls(threshold=float(values["threshold"]), medium=float(values["medium"]))
