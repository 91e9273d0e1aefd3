"""The ensemble: weight XGBoost and the autoencoder, calibrate, and choose the cut points, all on validation rows
(the training's out-of-fold scores, ``training.pipeline.fit_models``).

The weight is picked on validation average precision from a grid that contains the design default (0.7/0.3)
and 1.0 (XGBoost alone), among the weights whose validation ROC-AUC is no lower than XGBoost alone's, so an
autoencoder that adds nothing, or adds precision only by ranking the rest worse, gets weight 0 and the report says
so. The calibrated score reads as a probability; the alert threshold maximises F1 or minimises the expected cost
(missed fraud amount + review cost x alerts); MEDIUM starts where F2 (recall counted twice) peaks below it.

The merchant floor (``MerchantFloor``): a purchase is scored at least as likely fraud as the merchant's fully
labelled recent purchases were beyond the base rate, their confirmed fraud share shrunk towards it. It is how issuers
treat a point of compromise: once a skimmed terminal's first labels arrive, every later charge there is suspect,
though no incident like it was in training for the model to learn from. Its strength is chosen on validation AP;
the floor goes only when validation shows it ranks worse than none (``choose_floor``).
"""

from __future__ import annotations

from collections.abc import Sequence
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
FLOOR_RISK, FLOOR_ROWS = "merchant_delayed_risk_7d", "merchant_delayed_count_7d"  # the fully labelled week
# A compromised terminal is physical: the floor lifts card-present purchases, and every purchase of data without
# a channel; an online merchant's past fraud says little of its next buyer (card-not-present fraud moves on).
FLOOR_CHANNELS = ("channel_card_present", "channel_missing")
FLOOR_RESAMPLES = 200
FLOOR_DROP_CONFIDENCE = 0.95
FLOOR_PRIOR_ROWS = (300.0, 100.0, 30.0, 10.0)  # pseudo-purchases at the base rate, the most cautious first


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


def merchant_record(x: np.ndarray, feature_names: Sequence[str]) -> np.ndarray | None:
    """Each row's merchant fraud share and purchase count over the fully labelled week, and 1 where the floor
    applies (``FLOOR_CHANNELS``), (rows x 3); None when the features do not have them."""
    names = list(feature_names)
    if not {FLOOR_RISK, FLOOR_ROWS, *FLOOR_CHANNELS} <= set(names):
        return None
    columns = [names.index(name) for name in (FLOOR_RISK, FLOOR_ROWS, *FLOOR_CHANNELS)]
    record = np.asarray(x[:, columns], dtype=np.float64)
    return np.column_stack([record[:, 0], record[:, 1], record[:, 2:].max(axis=1)])


@dataclass(frozen=True)
class MerchantFloor:
    """The fraud probability a merchant's labelled record gives a purchase there: the Beta posterior mean of its
    fraud share (``prior_rows`` pseudo-purchases at ``base_rate`` added to its real ones), of which the part above
    the base rate is evidence the model may lack. Joined to the model's probability as independent evidence
    (noisy-OR), so a score is never below that excess, and the model's ranking of every other row stays as it was
    (a plain maximum would tie every row under the floor)."""

    prior_rows: float
    base_rate: float

    def rate(self, record: np.ndarray) -> np.ndarray:
        share, rows = record[:, 0], record[:, 1]
        return (share * rows + self.base_rate * self.prior_rows) / (rows + self.prior_rows)

    def excess(self, record: np.ndarray) -> np.ndarray:
        applies = record[:, 2] > 0
        return np.where(applies, np.maximum(self.rate(record) - self.base_rate, 0.0) / (1.0 - self.base_rate), 0.0)

    def apply(self, fraud_score: np.ndarray, record: np.ndarray | None) -> np.ndarray:
        return fraud_score if record is None else _noisy_or(fraud_score, self.excess(record))


def _noisy_or(fraud_score: np.ndarray, excess: np.ndarray) -> np.ndarray:
    return 1.0 - (1.0 - fraud_score) * (1.0 - excess)


def choose_floor(
    y: np.ndarray, fraud_score: np.ndarray, record: np.ndarray | None, *, seed: int = 0
) -> tuple[MerchantFloor | None, dict[str, Any]]:
    """The floor with the best validation AP (the most cautious of equals), kept unless validation shows it ranks
    worse than none: worse in at least ``FLOOR_DROP_CONFIDENCE`` of paired bootstrap resamples of the validation
    rows. Validation seldom holds an incident whose labels have arrived, so it seldom tells; the floor is the prior
    an analyst would apply, and goes only when the data speaks against it."""
    if record is None:
        return None, {}
    base_rate = float(np.mean(y))
    floors = [MerchantFloor(prior_rows, base_rate) for prior_rows in FLOOR_PRIOR_ROWS]
    lifted = {floor: floor.apply(fraud_score, record) for floor in floors}
    ap = {floor: float(average_precision_score(y, scores)) for floor, scores in lifted.items()}
    best = max(floors, key=lambda floor: round(ap[floor], 4))  # max keeps the first of equals: the most cautious
    rng = np.random.default_rng(seed)
    worse = 0
    for _ in range(FLOOR_RESAMPLES):
        rows = rng.integers(0, len(y), len(y))
        if y[rows].any():
            worse += average_precision_score(y[rows], lifted[best][rows]) < average_precision_score(
                y[rows], fraud_score[rows]
            )
    kept = worse < FLOOR_DROP_CONFIDENCE * FLOOR_RESAMPLES
    return (best if kept else None), {
        "ap": {"none": round(float(average_precision_score(y, fraud_score)), 5)}
        | {f"{floor.prior_rows:g}": round(value, 5) for floor, value in ap.items()},
        "resamples_where_the_best_floor_ranks_worse": round(worse / FLOOR_RESAMPLES, 3),
    }


@dataclass(frozen=True)
class Ensemble:
    xgb_weight: float
    calibration: Calibration
    policy: RiskPolicy
    objective: Objective
    merchant_floor: MerchantFloor | None = None

    @property
    def ae_weight(self) -> float:
        return round(1.0 - self.xgb_weight, 6)

    def raw(self, xgb_score: np.ndarray, ae_score: np.ndarray) -> np.ndarray:
        return self.xgb_weight * xgb_score + (1.0 - self.xgb_weight) * ae_score

    def fraud_score(self, xgb_score: np.ndarray, ae_score: np.ndarray, record: np.ndarray | None = None) -> np.ndarray:
        """``record``: the rows' ``merchant_record``, for the merchant floor (None: no floor)."""
        return self.scored(xgb_score, ae_score, record)[0]

    def scored(
        self, xgb_score: np.ndarray, ae_score: np.ndarray, record: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The fraud score, and the rows whose merchant record gave them at least half of it (their reasons say so
        first); the floor's excess is computed once for both."""
        calibrated = self.calibration.apply(self.raw(xgb_score, ae_score))
        if self.merchant_floor is None or record is None:
            return calibrated, np.zeros(len(calibrated), dtype=bool)
        excess = self.merchant_floor.excess(record)
        fraud_score = _noisy_or(calibrated, excess)
        return fraud_score, (excess > 0) & (2 * excess >= fraud_score)

    def to_dict(self) -> dict[str, Any]:
        floor = self.merchant_floor
        return {
            "xgb_weight": self.xgb_weight,
            "ae_weight": self.ae_weight,
            "objective": self.objective,
            "calibration": {"method": self.calibration.method, "params": self.calibration.params},
            "policy": self.policy.to_dict(),
            "merchant_floor": None if floor is None else {"prior_rows": floor.prior_rows, "base_rate": floor.base_rate},
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Ensemble":
        calibration = Calibration(values["calibration"]["method"], values["calibration"]["params"])
        floor = values.get("merchant_floor")  # bundles from before the floor have none
        return cls(
            xgb_weight=float(values["xgb_weight"]),
            calibration=calibration,
            policy=RiskPolicy.from_dict(values["policy"]),
            objective=values["objective"],
            merchant_floor=None
            if floor is None
            else MerchantFloor(float(floor["prior_rows"]), float(floor["base_rate"])),
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
    record: np.ndarray | None = None,
) -> tuple[Ensemble, dict[str, Any]]:
    """Everything chosen on the scored validation rows given (``weight``: keep this XGBoost weight, chosen
    elsewhere; ``anomaly_review_rate``: the anomaly review lane's trained level is the anomaly score above which
    this share of the genuine rows lies, its live level the same share of recent traffic, 0 for no lane;
    ``record``: the rows' ``merchant_record``, None for no merchant floor); returns the ensemble and what was
    compared to choose it."""
    if y.sum() == 0:
        raise ValueError("is_fraud: the validation rows have no fraud; cannot choose weights or a threshold")
    chosen, by_weight = choose_weight(y, xgb_score, ae_score)
    weight = chosen if weight is None else weight
    raw = weight * xgb_score + (1 - weight) * ae_score
    fitted = Calibration.fit(raw, y, calibration)
    calibrated = fitted.apply(raw)
    floor, ap_by_floor = choose_floor(y, calibrated, record)
    scored = calibrated if floor is None else floor.apply(calibrated, record)
    policy, at_threshold = choose_policy(y, scored, amounts, objective, review_cost)
    lane: dict[str, Any] = {"rate": anomaly_review_rate}
    if anomaly_review_rate > 0:
        policy = replace(
            policy,
            anomaly_review=float(np.quantile(ae_score[y == 0], 1 - anomaly_review_rate)),
            anomaly_review_rate=anomaly_review_rate,
        )
        in_lane = policy.in_anomaly_lane(ae_score)
        below_alert = ~policy.is_fraud(scored)
        lane |= {
            "level": policy.anomaly_review,
            "validation_genuine_share": round(float(in_lane[y == 0].mean()), 5),
            "validation_frauds_below_alert_it_reviews": round(float(in_lane[(y == 1) & below_alert].mean()), 4)
            if ((y == 1) & below_alert).any()
            else None,
        }
    ensemble = Ensemble(xgb_weight=weight, calibration=fitted, policy=policy, objective=objective, merchant_floor=floor)
    return ensemble, {
        "validation_ap_by_xgb_weight": by_weight["ap"],
        "validation_roc_auc_by_xgb_weight": by_weight["roc_auc"],
        "default_xgb_weight": DEFAULT_XGB_WEIGHT,
        "autoencoder_adds_value": weight < 1.0,
        "validation_at_threshold": at_threshold,
        "anomaly_review": lane,
        "validation_ap_by_merchant_floor": ap_by_floor,
    }
