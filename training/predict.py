"""The scoring core the Serve replicas, the stream scorer, the SDK and the backtest all call: features -> decision.

Vectorised over a batch: one XGBoost ``inplace_predict`` and one autoencoder forward pass per call.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xgboost as xgb

from cluster.config import Settings
from training.registry import ModelBundle, registry_for

CONTRIBUTION_PREFIX = "contrib_"
BIAS_COLUMN = f"{CONTRIBUTION_PREFIX}bias"


class FraudScorer:
    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle
        self.feature_names = bundle.feature_names
        self.version = bundle.version
        self.policy = bundle.ensemble.policy
        self._columns = list(bundle.feature_names)

    @classmethod
    def from_registry(cls, settings: Settings, ref: str = "champion") -> "FraudScorer":
        return cls(registry_for(settings).load(ref))

    def matrix(self, features: pd.DataFrame) -> np.ndarray:
        missing = [name for name in self._columns if name not in features.columns]
        if missing:
            raise ValueError(f"features are missing column(s) the model needs: {', '.join(missing)}")
        return features[self._columns].to_numpy(dtype=np.float32)

    def score(self, features: pd.DataFrame, *, contributions: bool = False) -> pd.DataFrame:
        """fraud_score (calibrated 0..1), xgb_score, ae_score, risk_level, is_fraud per row, in input order;
        with ``contributions``, also one ``contrib_<feature>`` column per feature (XGBoost log-odds, for reasons)."""
        x = self.matrix(features)
        xgb_score = self.bundle.booster.inplace_predict(x, validate_features=False).astype(np.float64)
        ae_score = self.bundle.anomaly.score(x)
        fraud_score = self.bundle.ensemble.fraud_score(xgb_score, ae_score)
        out = pd.DataFrame({"fraud_score": fraud_score, "xgb_score": xgb_score, "ae_score": ae_score,
                            "risk_level": self.policy.risk_levels(fraud_score),
                            "is_fraud": self.policy.is_fraud(fraud_score)}, index=features.index)
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
