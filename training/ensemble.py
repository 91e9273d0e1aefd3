"""The ensemble: weight XGBoost and the autoencoder, calibrate, and choose the cut points, all on validation rows
(the training's out-of-fold scores, ``training.pipeline.fit_models``).

The weight is picked on validation average precision from a grid that contains the design default (0.7/0.3)
and 1.0 (XGBoost alone), among the weights whose validation ROC-AUC is no lower than XGBoost alone's, so an
autoencoder that adds nothing, or adds precision only by ranking the rest worse, gets weight 0 and the report says
so. The calibrated score reads as a probability; the alert threshold maximises F1 or minimises the expected cost
(missed fraud amount + review cost x alerts); MEDIUM starts where F2 (recall counted twice) peaks below it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from training.policy import RiskPolicy

Objective = Literal["f1", "cost"]
CalibrationMethod = Literal["platt", "isotonic"]
WEIGHT_GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
DEFAULT_XGB_WEIGHT = 0.7
REVIEW_COST = 5.0  # currency units an analyst's look at one alert costs
_EPS = 1e-6


# The Platt line is fitted on logits clipped to [_EPS, 1 - _EPS], where scores still say something, and applied on
# the whole float64 range: clipping there too would tie every score below _EPS and cost ranking (ROC-AUC).
_APPLY_RANGE = (float(np.finfo(np.float64).tiny), float(np.nextafter(1.0, 0.0)))


def _logit(p: np.ndarray, low: float = _EPS, high: float = 1 - _EPS) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), low, high)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class Calibration:
    """Monotone map from the raw ensemble score to a probability."""

    method: CalibrationMethod
    params: dict[str, Any]

    @classmethod
    def fit(cls, raw: np.ndarray, y: np.ndarray, method: CalibrationMethod = "platt") -> "Calibration":
        if method == "platt":
            model = LogisticRegression(C=1e4).fit(_logit(raw).reshape(-1, 1), y)
            return cls("platt", {"slope": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])})
        if method == "isotonic":
            model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y)
            return cls("isotonic", {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()})
        raise ValueError(f"calibration must be 'platt' or 'isotonic', got {method!r}")

    def apply(self, raw: np.ndarray) -> np.ndarray:
        if self.method == "platt":
            return expit(self.params["slope"] * _logit(raw, *_APPLY_RANGE) + self.params["intercept"])
        return np.interp(raw, self.params["x"], self.params["y"])


@dataclass(frozen=True)
class Ensemble:
    xgb_weight: float
    calibration: Calibration
    policy: RiskPolicy
    objective: Objective

    @property
    def ae_weight(self) -> float:
        return round(1.0 - self.xgb_weight, 6)

    def raw(self, xgb_score: np.ndarray, ae_score: np.ndarray) -> np.ndarray:
        return self.xgb_weight * xgb_score + (1.0 - self.xgb_weight) * ae_score

    def fraud_score(self, xgb_score: np.ndarray, ae_score: np.ndarray) -> np.ndarray:
        return self.calibration.apply(self.raw(xgb_score, ae_score))

    def to_dict(self) -> dict[str, Any]:
        return {
            "xgb_weight": self.xgb_weight,
            "ae_weight": self.ae_weight,
            "objective": self.objective,
            "calibration": {"method": self.calibration.method, "params": self.calibration.params},
            "policy": self.policy.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Ensemble":
        calibration = Calibration(values["calibration"]["method"], values["calibration"]["params"])
        return cls(
            xgb_weight=float(values["xgb_weight"]),
            calibration=calibration,
            policy=RiskPolicy.from_dict(values["policy"]),
            objective=values["objective"],
        )


def choose_weight(y: np.ndarray, xgb_score: np.ndarray, ae_score: np.ndarray) -> tuple[float, dict[str, Any]]:
    """The grid weight with the best validation AP among those that rank the rows at least as well (ROC-AUC) as
    XGBoost alone: a blend must not buy precision at the top with worse ranking below it. Ties go to the simpler
    model (more XGBoost)."""
    blends = {w: w * xgb_score + (1 - w) * ae_score for w in WEIGHT_GRID}
    ap_by_weight = {w: float(average_precision_score(y, blend)) for w, blend in blends.items()}
    auc_by_weight = {w: float(roc_auc_score(y, blend)) for w, blend in blends.items()}
    ranks_as_well = [w for w in WEIGHT_GRID if auc_by_weight[w] >= auc_by_weight[1.0]]
    best = max(ranks_as_well, key=lambda w: (round(ap_by_weight[w], 4), w))
    return best, {
        "ap": {f"{w:.1f}": round(ap, 5) for w, ap in ap_by_weight.items()},
        "roc_auc": {f"{w:.1f}": round(auc, 5) for w, auc in auc_by_weight.items()},
    }


def _sorted_cuts(y: np.ndarray, scores: np.ndarray, amounts: np.ndarray) -> dict[str, np.ndarray]:
    """For each distinct score taken as the threshold (alert when score >= it): alerts, caught frauds, amounts."""
    order = np.argsort(-scores, kind="stable")
    s, labels, money = scores[order], y[order].astype(np.float64), amounts[order] * y[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    return {
        "cut": s[last_of_tie],
        "alerts": np.arange(1, len(s) + 1)[last_of_tie],
        "caught": np.cumsum(labels)[last_of_tie],
        "caught_amount": np.cumsum(money)[last_of_tie],
    }


def choose_policy(
    y: np.ndarray, scores: np.ndarray, amounts: np.ndarray, objective: Objective, review_cost: float = REVIEW_COST
) -> tuple[RiskPolicy, dict[str, float]]:
    """Alert threshold by best F1 or least expected cost; MEDIUM cut by best F2 at or below it."""
    cuts = _sorted_cuts(y, scores, amounts)
    frauds = max(float(y.sum()), 1.0)
    precision = cuts["caught"] / cuts["alerts"]
    recall = cuts["caught"] / frauds

    def f_beta(beta: float) -> np.ndarray:
        return (1 + beta**2) * precision * recall / np.maximum(beta**2 * precision + recall, _EPS)

    if objective == "f1":
        best = int(np.argmax(f_beta(1.0)))
    elif objective == "cost":
        missed = float((amounts * y).sum()) - cuts["caught_amount"]
        best = int(np.argmin(missed + review_cost * cuts["alerts"]))
    else:
        raise ValueError(f"objective must be 'f1' or 'cost', got {objective!r}")
    threshold = float(cuts["cut"][best])
    f2 = np.where(cuts["cut"] <= threshold, f_beta(2.0), -1.0)
    medium = float(cuts["cut"][int(np.argmax(f2))])
    return RiskPolicy(threshold=threshold, medium=min(medium, threshold)), {
        "threshold": threshold,
        "medium": medium,
        "precision": float(precision[best]),
        "recall": float(recall[best]),
        "f1": float(f_beta(1.0)[best]),
        "alerts": int(cuts["alerts"][best]),
    }


def fit_ensemble(
    y: np.ndarray,
    xgb_score: np.ndarray,
    ae_score: np.ndarray,
    amounts: np.ndarray,
    *,
    objective: Objective = "f1",
    calibration: CalibrationMethod = "platt",
    review_cost: float = REVIEW_COST,
    weight: float | None = None,
    anomaly_review_rate: float = 0.0,
) -> tuple[Ensemble, dict[str, Any]]:
    """Everything chosen on the scored validation rows given (``weight``: keep this XGBoost weight, chosen
    elsewhere; ``anomaly_review_rate``: the anomaly review lane's trained level is the anomaly score above which
    this share of the genuine rows lies, its live level the same share of recent traffic, 0 for no lane); returns
    the ensemble and what was compared to choose it."""
    if y.sum() == 0:
        raise ValueError("is_fraud: the validation rows have no fraud; cannot choose weights or a threshold")
    chosen, by_weight = choose_weight(y, xgb_score, ae_score)
    weight = chosen if weight is None else weight
    raw = weight * xgb_score + (1 - weight) * ae_score
    fitted = Calibration.fit(raw, y, calibration)
    policy, at_threshold = choose_policy(y, fitted.apply(raw), amounts, objective, review_cost)
    lane: dict[str, Any] = {"rate": anomaly_review_rate}
    if anomaly_review_rate > 0:
        policy = replace(
            policy,
            anomaly_review=float(np.quantile(ae_score[y == 0], 1 - anomaly_review_rate)),
            anomaly_review_rate=anomaly_review_rate,
        )
        in_lane = policy.in_anomaly_lane(ae_score)
        below_alert = ~policy.is_fraud(fitted.apply(raw))
        lane |= {
            "level": policy.anomaly_review,
            "validation_genuine_share": round(float(in_lane[y == 0].mean()), 5),
            "validation_frauds_below_alert_it_reviews": round(float(in_lane[(y == 1) & below_alert].mean()), 4)
            if ((y == 1) & below_alert).any()
            else None,
        }
    ensemble = Ensemble(xgb_weight=weight, calibration=fitted, policy=policy, objective=objective)
    return ensemble, {
        "validation_ap_by_xgb_weight": by_weight["ap"],
        "validation_roc_auc_by_xgb_weight": by_weight["roc_auc"],
        "default_xgb_weight": DEFAULT_XGB_WEIGHT,
        "autoencoder_adds_value": weight < 1.0,
        "validation_at_threshold": at_threshold,
        "anomaly_review": lane,
    }
