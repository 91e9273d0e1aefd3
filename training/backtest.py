"""``fraudctl backtest``: train on one window, then score a later window exactly as production would have.

Timeline (UTC days): rows before ``train_start`` are feature history only; the model trains on
[start, start + train_days); the test window [start + train_days + delay_days, + test_days) is scored with
features that see only earlier transactions and labels already known (a label arrives ``delay_days`` after its
transaction). Features are strictly causal, so scoring the whole window at once gives each row the same score
as scoring the rows one by one in time order. Works on files with only the required columns plus ``is_fraud``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.metrics import average_precision_score, roc_auc_score
from tqdm.auto import tqdm

from cluster.config import Settings
from cluster.features import FEATURE_NAMES, FEATURE_VERSION
from cluster.runtime import ray_runtime
from cluster.schema import LABEL_COLUMN
from training.data import Split, featurize, load_profiles, read_labelled, take
from training.pipeline import Budget, FittedModels, fit_models
from training.predict import FraudScorer

INNER_VALIDATION_SHARE = 0.3  # the training window in two parts; fit_models cuts rolling folds over both


@dataclass(frozen=True)
class BacktestWindow:
    train_start: date
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7

    def __post_init__(self) -> None:
        if self.train_days < 1 or self.test_days < 1 or self.delay_days < 0:
            raise ValueError(f"window needs train_days >= 1, test_days >= 1, delay_days >= 0; got {self}")

    @property
    def start(self) -> pd.Timestamp:
        return pd.Timestamp(self.train_start, tz="UTC")

    @property
    def train_end(self) -> pd.Timestamp:
        return self.start + pd.Timedelta(days=self.train_days)

    @property
    def test_start(self) -> pd.Timestamp:
        return self.train_end + pd.Timedelta(days=self.delay_days)

    @property
    def test_end(self) -> pd.Timestamp:
        return self.test_start + pd.Timedelta(days=self.test_days)

    def inner_split(self) -> pd.Timestamp:
        """Where the inner validation part of the training window starts (whole hours, at least one hour in)."""
        span = self.train_end - self.start
        return self.train_end - max((span * INNER_VALIDATION_SHARE).floor("h"), pd.Timedelta(hours=1))


@dataclass
class BacktestRun:
    """A trained window: the test rows' scores (``fraud_score``, ``xgb_score``, ``ae_score``, ...), the fitted
    models, the splits and how many rows were feature history only."""

    scores: pd.DataFrame
    fitted: FittedModels
    train: Split
    valid: Split
    test: Split
    history_rows: int


def backtest_window(
    settings: Settings,
    transactions: pd.DataFrame,
    *,
    window: BacktestWindow,
    users: pd.DataFrame | None,
    merchants: pd.DataFrame | None,
    source: str,
    trials: int | None = None,
    feature_names: tuple[str, ...] = FEATURE_NAMES,
    progress: tqdm | None = None,
) -> BacktestRun:
    """Features over ``transactions`` (labelled), model selection inside the training window, the final fit on
    all of it, and the test window scored causally; shared by ``fraudctl backtest`` and ``fraudctl evaluate``."""
    transactions = transactions[transactions["timestamp"] < window.test_end].reset_index(drop=True)
    features = featurize(transactions, label_delay=timedelta(days=window.delay_days), users=users, merchants=merchants)
    if progress is not None:
        progress.set_description("built features")
        progress.update(1)

    inner = window.inner_split()
    train = take("train", transactions, features, feature_names, (window.start, inner))
    valid = take("validation", transactions, features, feature_names, (inner, window.train_end))
    test = take("test", transactions, features, feature_names, (window.test_start, window.test_end))
    for split, period in ((train, (window.start, window.train_end)), (test, (window.test_start, window.test_end))):
        if len(split) == 0:
            raise ValueError(
                f"--train-start/--*-days: no transactions in the {split.name} window "
                f"[{period[0]:%Y-%m-%d}, {period[1]:%Y-%m-%d}) of {source}"
            )
    if train.fraud_count + valid.fraud_count == 0:
        raise ValueError(
            f"is_fraud: the training window [{window.start:%Y-%m-%d}, {window.train_end:%Y-%m-%d}) "
            "has no fraud to learn from"
        )

    storage = Path(settings.data_dir).resolve() / "ray_results"
    with ray_runtime(settings):
        fitted = fit_models(
            train,
            valid,
            feature_names,
            FEATURE_VERSION,
            budget=Budget.from_trials(trials, settings.seed),
            storage=storage,
            label_delay=timedelta(days=window.delay_days),
            refit_on_validation=True,
            anomaly_review_rate=settings.anomaly_review_rate,
            progress=progress,
        )
    scores = FraudScorer(fitted.bundle).score(features.loc[_mask(transactions, window), :])
    return BacktestRun(
        scores=scores.reset_index(drop=True),
        fitted=fitted,
        train=train,
        valid=valid,
        test=test,
        history_rows=int((transactions["timestamp"] < window.start).sum()),
    )


def run_backtest(
    settings: Settings, *, data: Path, window: BacktestWindow, out: Path, trials: int | None = None
) -> dict[str, Any]:
    """Train on the window, score every test transaction, write ``transaction_id,fraud_score`` to ``out``."""
    started = time.perf_counter()
    progress = tqdm(total=5, desc="reading data", unit="stage")
    users, merchants = load_profiles(data)
    run = backtest_window(
        settings,
        read_labelled(data),
        window=window,
        users=users,
        merchants=merchants,
        source=str(data),
        trials=trials,
        progress=progress,
    )
    scores, fitted, train, valid, test = run.scores, run.fitted, run.train, run.valid, run.test
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scores[["transaction_id", "fraud_score"]].to_csv(out, index=False)
    progress.set_description(f"wrote {out.name}")
    progress.update(1)
    progress.close()

    y = test.frame[LABEL_COLUMN].to_numpy()
    summary: dict[str, Any] = {
        "out": str(out),
        "scored": int(len(scores)),
        "rows": {"history": run.history_rows, "train": len(train) + len(valid), "test": len(test)},
        "frauds": {"train": train.fraud_count + valid.fraud_count, "test": test.fraud_count},
        "window": {
            "train": [str(window.start), str(window.train_end)],
            "test": [str(window.test_start), str(window.test_end)],
            "label_delay_days": window.delay_days,
        },
        "ensemble": {
            k: fitted.details["ensemble"][k]
            for k in ("xgb_weight", "ae_weight", "merchant_floor", "validation_ap_by_merchant_floor")
        },
        "model_selection": {
            "xgboost": fitted.details["xgboost"]["selected"],
            "monotone": fitted.details["xgboost"]["monotone"],
            "folds": fitted.details["folds"],
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    if 0 < y.sum() < len(y):
        summary["test_metrics"] = _ranking(y, scores["fraud_score"].to_numpy())
        summary["ranking_check"] = ranking_check(run, settings.seed)
        summary["anomaly_review"] = anomaly_review_check(run)
    return summary


def anomaly_review_check(run: BacktestRun) -> dict[str, Any] | None:
    """What the anomaly review lane did on the test period (``RiskPolicy.lane_summary``), its live level replayed
    over the period in time order as serving would have kept it."""
    policy, ae_score = run.fitted.bundle.ensemble.policy, run.scores["ae_score"].to_numpy()
    lane_level = policy.rolling_lane_levels(ae_score, run.test.frame["timestamp"].values)
    return policy.lane_summary(run.test.y, run.scores["fraud_score"].to_numpy(), ae_score, lane_level)


def _ranking(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return {
        "average_precision": round(float(average_precision_score(y, scores)), 5),
        "roc_auc": round(float(roc_auc_score(y, scores)), 5),
    }


def ranking_check(run: BacktestRun, seed: int) -> dict[str, dict[str, float]]:
    """The test period ranked by the ensemble's raw score (before calibration), calibrated without the merchant
    floor, and by a plain XGBoost (library defaults) fit on the same features and training rows: calibration must
    not cost ranking, the floor's share is stated, nor may the tuned model fall below an untuned one. Reported only;
    nothing is chosen on it."""
    y, ensemble = run.test.y, run.fitted.bundle.ensemble
    raw = ensemble.raw(run.scores["xgb_score"].to_numpy(), run.scores["ae_score"].to_numpy())
    plain = xgb.XGBClassifier(tree_method="hist", n_jobs=2, random_state=seed).fit(
        np.vstack([run.train.x, run.valid.x]), np.concatenate([run.train.y, run.valid.y])
    )
    return {
        "before_calibration": _ranking(y, raw),
        "without_merchant_floor": _ranking(y, ensemble.calibration.apply(raw)),
        "plain_xgboost": _ranking(y, plain.predict_proba(run.test.x)[:, 1]),
    }


def _mask(transactions: pd.DataFrame, window: BacktestWindow) -> pd.Series:
    return (transactions["timestamp"] >= window.test_start) & (transactions["timestamp"] < window.test_end)
