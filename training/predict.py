"""The decision core, the one home of "features -> scores -> decision": the Serve replicas, the stream consumers,
the SDK, training's evaluation and the backtest all score through these functions.

Vectorised over a batch: one XGBoost ``inplace_predict`` and one autoencoder forward pass per call. The Serve graph
runs ``xgb_scores`` and ``ae_scores`` in two deployments, then ``decide``; ``FraudScorer.score`` runs all three.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xgboost as xgb

from training.ensemble import merchant_record
from training.registry import ModelBundle

CONTRIBUTION_PREFIX = "contrib_"
BIAS_COLUMN = f"{CONTRIBUTION_PREFIX}bias"


def xgb_scores(bundle: ModelBundle, x: np.ndarray) -> np.ndarray:
    """XGBoost's fraud probability per row of a (rows x features) float32 matrix."""
    return bundle.booster.inplace_predict(x, validate_features=False).astype(np.float64)


def ae_scores(bundle: ModelBundle, x: np.ndarray) -> np.ndarray:
    """The autoencoder's anomaly score per row (its reconstruction error's quantile among genuine rows)."""
    return bundle.anomaly.score(x)


@dataclass(frozen=True)
class Scores:
    """The decision per row: calibrated ensemble score, risk level (one of ``RISK_LEVELS``), the alert flag,
    whether the anomaly review lane sent it to review (below the alert threshold) and whether the merchant floor
    set its score."""

    fraud_score: np.ndarray
    risk_level: np.ndarray
    is_fraud: np.ndarray
    anomaly_review: np.ndarray
    merchant_floor: np.ndarray


def decide(
    bundle: ModelBundle,
    x: np.ndarray,
    xgb_score: np.ndarray,
    ae_score: np.ndarray,
    lane_level: float | np.ndarray | None = None,
) -> Scores:
    """``x``: the rows' features, for the merchant floor; ``lane_level``: the anomaly review lane's live level
    (``RiskPolicy.live_lane_level``), per row or one; None applies the trained level."""
    record = None if bundle.ensemble.merchant_floor is None else merchant_record(x, bundle.feature_names)
    fraud_score, floor_set = bundle.ensemble.scored(xgb_score, ae_score, record)
    policy = bundle.ensemble.policy
    return Scores(
        fraud_score=fraud_score,
        risk_level=policy.risk_levels(fraud_score, ae_score, lane_level),
        is_fraud=policy.is_fraud(fraud_score),
        anomaly_review=policy.lane_reviews(fraud_score, ae_score, lane_level),
        merchant_floor=floor_set,
    )


class FraudScorer:
    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle
        self.feature_names = bundle.feature_names
        self.version = bundle.version
        self.policy = bundle.ensemble.policy
        self._columns = list(bundle.feature_names)

    def matrix(self, features: pd.DataFrame) -> np.ndarray:
        missing = [name for name in self._columns if name not in features.columns]
        if missing:
            raise ValueError(f"features are missing column(s) the model needs: {', '.join(missing)}")
        return features[self._columns].to_numpy(dtype=np.float32)

    def score(
        self, features: pd.DataFrame, *, contributions: bool = False, times: np.ndarray | None = None
    ) -> pd.DataFrame:
        """fraud_score (calibrated 0..1), xgb_score, ae_score, risk_level, is_fraud, anomaly_review per row, in input
        order; with the rows' ``times``, the anomaly lane's live level is replayed over them as serving would have
        moved it (``RiskPolicy.rolling_lane_levels``), else the trained level applies; with ``contributions``, also
        one ``contrib_<feature>`` column per feature (XGBoost log-odds, for reasons)."""
        x = self.matrix(features)
        xgb_score, ae_score = xgb_scores(self.bundle, x), ae_scores(self.bundle, x)
        lane_level = None if times is None else self.policy.rolling_lane_levels(ae_score, times)
        scores = decide(self.bundle, x, xgb_score, ae_score, lane_level)
        out = pd.DataFrame(
            {
                "fraud_score": scores.fraud_score,
                "xgb_score": xgb_score,
                "ae_score": ae_score,
                "risk_level": scores.risk_level,
                "is_fraud": scores.is_fraud,
                "anomaly_review": scores.anomaly_review,
            },
            index=features.index,
        )
        if "transaction_id" in features.columns:
            out.insert(0, "transaction_id", features["transaction_id"].to_numpy())
        if contributions:
            out = pd.concat([out, self.contributions(x, index=features.index)], axis=1)
        return out

    def contributions(self, x: np.ndarray, *, index: pd.Index | None = None) -> pd.DataFrame:
        """Per-feature XGBoost contributions (``pred_contribs``) plus the bias column; rows sum to the margin."""
        matrix = xgb.DMatrix(x, feature_names=self._columns)
        values = self.bundle.booster.predict(matrix, pred_contribs=True)
        columns = [f"{CONTRIBUTION_PREFIX}{name}" for name in self._columns] + [BIAS_COLUMN]
        return pd.DataFrame(values, columns=columns, index=index)
