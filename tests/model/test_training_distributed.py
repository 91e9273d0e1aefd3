"""``--distributed``: the final XGBoost fit through Ray Train's XGBoostTrainer (V2) learns what a local fit learns."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from training.xgb import fit_xgboost, fit_xgboost_distributed


def test_distributed_fit_matches_a_local_fit(ray_session, tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, 5)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(0, 0.5, len(x)) > 1.8).astype(np.int8)
    names = tuple(f"f{i}" for i in range(5))
    params = {"max_depth": 3, "eta": 0.3}
    distributed = fit_xgboost_distributed(x[:4000], y[:4000], names, params, 20, storage=tmp_path)
    local = fit_xgboost(x[:4000], y[:4000], names, params, 20)
    assert distributed.num_boosted_rounds() == 20
    held_out = x[4000:]
    auc_distributed = roc_auc_score(y[4000:], distributed.inplace_predict(held_out))
    auc_local = roc_auc_score(y[4000:], local.inplace_predict(held_out))
    assert auc_distributed > 0.9 and abs(auc_distributed - auc_local) < 0.02
