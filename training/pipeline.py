"""``fraudctl train``: features -> time splits -> Ray Tune (XGBoost, autoencoder) -> ensemble -> report -> registry."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cluster.config import Settings
from cluster.features import FEATURE_NAMES, FEATURE_VERSION
from cluster.runtime import ray_runtime
from training.autoencoder import (
    AESearch,
    AnomalyScorer,
    anomaly_inputs,
    fit_scaler,
    standardise,
    tune_autoencoder,
)
from training.data import (
    Split,
    featurize,
    folds_with_fraud,
    load_profiles,
    read_labelled,
    rolling_folds,
    take,
    time_periods,
)
from training.ensemble import Objective, choose_weight, fit_ensemble, merchant_record
from training.evaluate import evaluate, write_report
from training.predict import FraudScorer
from training.reference import build_reference, input_missing_rates
from training.registry import ModelBundle, registry_for
from training.xgb import RANKING_METRIC, XGBSearch, fit_xgboost, fit_xgboost_distributed, tune_xgboost

DEFAULT_XGB_TRIALS = 8
DEFAULT_AE_TRIALS = 4


@dataclass(frozen=True)
class TrainOptions:
    data: Path
    trials: int | None = None
    distributed: bool = False
    objective: str = "f1"
    promote: bool | None = None  # None: when it beats the champion's test AP (``ModelRegistry.register``)


@dataclass(frozen=True)
class Budget:
    """How much tuning: trials per model (the autoencoder gets half as many, at least two)."""

    xgb: XGBSearch
    ae: AESearch

    @classmethod
    def from_trials(cls, trials: int | None, seed: int) -> "Budget":
        xgb_trials = trials or DEFAULT_XGB_TRIALS
        ae_trials = DEFAULT_AE_TRIALS if trials is None else max(2, trials // 2)
        return cls(xgb=XGBSearch(trials=xgb_trials, seed=seed), ae=AESearch(trials=ae_trials, seed=seed))


@dataclass
class FittedModels:
    bundle: ModelBundle
    details: dict[str, Any]


def _concat(first: Split, second: Split) -> Split:
    return Split(
        name=f"{first.name}+{second.name}",
        x=np.vstack([first.x, second.x]),
        y=np.concatenate([first.y, second.y]),
        frame=pd.concat([first.frame, second.frame], ignore_index=True),
    )


def _rows(split: Split, positions: np.ndarray, name: str) -> Split:
    return Split(
        name=name, x=split.x[positions], y=split.y[positions], frame=split.frame.iloc[positions].reset_index(drop=True)
    )


def fit_models(
    train: Split,
    valid: Split,
    feature_names: tuple[str, ...],
    feature_version: str,
    *,
    budget: Budget,
    storage: Path,
    label_delay: timedelta,
    objective: Objective = "f1",
    distributed: bool = False,
    refit_on_validation: bool = False,
    anomaly_review_rate: float = 0.0,
    progress: tqdm | None = None,
) -> FittedModels:
    """Choose on rolling time folds over train + valid, then fit the final models; Ray must be initialised.

    XGBoost's hyperparameters and rounds come from the folds' mean validation aucpr (``tune_xgboost``), the
    autoencoder's from the last fold, and the ensemble's weight from out-of-fold scores: every validation row of a
    fold scored by models fitted on that fold's training rows only; the autoencoder keeps the least weight any fold
    gives it (fold models are weaker than the final one, and an autoencoder that helps only some periods, or only
    those weaker models, earns nothing). The final models train on train (with
    ``refit_on_validation``, on train + valid, for windows too short to spare the most recent days), rounds scaled
    from the folds' mean training rows to the final rows. Calibration and cut points are fitted on the validation
    period scored by the final models when they never saw it, else on the out-of-fold scores, and so is the anomaly
    review lane's trained level (``anomaly_review_rate``: the share of traffic it may send to review; 0 for none).
    """

    def step(label: str) -> None:
        if progress is not None:
            progress.set_description(label)
            progress.update(1)

    started = time.perf_counter()
    window = _concat(train, valid)
    folds = folds_with_fraud(rolling_folds(window.frame["timestamp"], label_delay=label_delay), window.y)
    xgb_tuning = tune_xgboost(window.x, window.y, folds, feature_names, search=budget.xgb, storage=storage)
    step("tuned XGBoost")
    first, last = folds[0], folds[-1]
    inputs = anomaly_inputs(
        feature_names,
        window.x[first.train][window.y[first.train] == 0],
        window.x[last.valid][window.y[last.valid] == 0],
    )
    ae_train, ae_valid = window.x[last.train][:, list(inputs)], window.x[last.valid][:, list(inputs)]
    scaler = fit_scaler(ae_train)
    ae_tuning = tune_autoencoder(
        standardise(scaler, ae_train),
        window.y[last.train],
        standardise(scaler, ae_valid),
        window.y[last.valid],
        search=budget.ae,
        storage=storage,
    )
    step("tuned autoencoder")
    tuned_seconds = time.perf_counter() - started

    def fit_both(split: Split, rounds: int, *, final: bool) -> tuple[Any, AnomalyScorer]:
        if distributed and final:
            booster = fit_xgboost_distributed(
                split.x, split.y, feature_names, xgb_tuning.params, rounds, storage=storage, seed=budget.xgb.seed
            )
        else:
            booster = fit_xgboost(split.x, split.y, feature_names, xgb_tuning.params, rounds, seed=budget.xgb.seed)
        anomaly = AnomalyScorer.fit(
            split.x, split.y, ae_tuning.config, ae_tuning.epochs, inputs=inputs, seed=budget.ae.seed
        )
        return booster, anomaly

    out_of_fold = []
    for position, fold in enumerate(folds):
        booster, anomaly = fit_both(_rows(window, fold.train, f"fold {position + 1}"), xgb_tuning.rounds, final=False)
        out_of_fold.append(
            (booster.inplace_predict(window.x[fold.valid]).astype(np.float64), anomaly.score(window.x[fold.valid]))
        )
    fold_weights = [choose_weight(window.y[fold.valid], xgb, ae)[0] for fold, (xgb, ae) in zip(folds, out_of_fold)]
    scored = np.concatenate([fold.valid for fold in folds])
    ensemble, choice = fit_ensemble(
        window.y[scored],
        np.concatenate([xgb for xgb, _ in out_of_fold]),
        np.concatenate([ae for _, ae in out_of_fold]),
        window.frame["amount"].to_numpy()[scored],
        objective=objective,
        weight=max(fold_weights),
        anomaly_review_rate=anomaly_review_rate,
        record=merchant_record(window.x[scored], feature_names),
    )
    choice = {**choice, "xgb_weight_by_fold": fold_weights}
    final = window if refit_on_validation else train
    fold_rows = float(np.mean([len(fold.train) for fold in folds]))
    rounds = max(1, round(xgb_tuning.rounds * len(final) / fold_rows))
    booster, anomaly = fit_both(final, rounds, final=True)
    calibrated_on = "out-of-fold scores"
    if not refit_on_validation:
        ensemble, at_validation = fit_ensemble(
            valid.y,
            booster.inplace_predict(valid.x).astype(np.float64),
            anomaly.score(valid.x),
            valid.frame["amount"].to_numpy(),
            objective=objective,
            weight=ensemble.xgb_weight,
            anomaly_review_rate=anomaly_review_rate,
            record=merchant_record(valid.x, feature_names),
        )
        choice = {
            **choice,
            "validation_at_threshold": at_validation["validation_at_threshold"],
            "anomaly_review": at_validation["anomaly_review"],
            "validation_ap_by_merchant_floor": at_validation["validation_ap_by_merchant_floor"],
        }
        calibrated_on = "validation period scored by the final models"
    step("fitted ensemble")
    bundle = ModelBundle(
        booster=booster,
        anomaly=anomaly,
        ensemble=ensemble,
        feature_names=feature_names,
        feature_version=feature_version,
    )
    details = {
        "xgboost": {
            "params": xgb_tuning.params,
            "rounds": xgb_tuning.rounds,
            "valid_aucpr": xgb_tuning.valid_aucpr,
            "valid_auc": xgb_tuning.valid_auc,
            "selected": xgb_tuning.selected,
            "library_defaults": {
                "rounds": xgb_tuning.defaults["iteration"],
                "valid_aucpr": xgb_tuning.defaults["score"],
                "valid_auc": xgb_tuning.defaults["at_best"][RANKING_METRIC],
            },
            "trials": len(xgb_tuning.trials),
            "monotone": xgb_tuning.monotone,
            "distributed_fit": distributed,
        },
        "autoencoder": {
            "config": ae_tuning.config,
            "epochs": ae_tuning.epochs,
            "valid_ap": ae_tuning.valid_ap,
            "trials": len(ae_tuning.trials),
            "inputs": [feature_names[column] for column in inputs],
            "left_out": [name for column, name in enumerate(feature_names) if column not in inputs],
        },
        "ensemble": {**ensemble.to_dict(), **choice},
        "refit_on_validation": refit_on_validation,
        "folds": [
            {
                "train_rows": len(fold.train),
                "validation_rows": len(fold.valid),
                "validation_frauds": int(window.y[fold.valid].sum()),
                "validation_start": str(window.frame["timestamp"].iloc[fold.valid].min()),
                "gap_hours": round(fold.gap / pd.Timedelta(hours=1), 2),
            }
            for fold in folds
        ],
        "weight_chosen_on": "out-of-fold scores",
        "calibrated_on": calibrated_on,
        "final_rounds": rounds,
        "tuning_seconds": round(tuned_seconds, 1),
        "fit_seconds": round(time.perf_counter() - started, 1),
    }
    return FittedModels(bundle=bundle, details=details)


def ensemble_notes(details: dict[str, Any]) -> list[str]:
    """What the report says about the ensemble, honestly."""
    ensemble = details["ensemble"]
    ap = ensemble["validation_ap_by_xgb_weight"]
    if ensemble["autoencoder_adds_value"]:
        chosen = ap[f"{ensemble['xgb_weight']:.1f}"]
        verdict = (
            f"The autoencoder adds value on the out-of-fold scores: weight {ensemble['ae_weight']:.1f} "
            f"(AP {chosen} vs {ap['1.0']} for XGBoost alone)."
        )
    else:
        verdict = (
            f"The autoencoder adds nothing on the out-of-fold scores (AP with XGBoost alone {ap['1.0']}, "
            f"with the design default 0.7/0.3 {ap['0.7']}), so its weight is 0."
        )
    notes = [
        verdict,
        f"Alert threshold chosen by {ensemble['objective']} on the {details['calibrated_on']}; score "
        f"calibration: {ensemble['calibration']['method']}.",
    ]
    lane = ensemble.get("anomaly_review", {})
    if lane.get("level") is not None:
        notes.append(
            f"Anomaly review lane: a row among the {lane['rate']:.2%} most unusual of recent traffic by anomaly score "
            f"goes to review whatever its fraud score, never below {lane['level']:.5g} (set so that share of the "
            f"genuine rows on the {details['calibrated_on']} reach it; measured {lane['validation_genuine_share']:.2%}); "
            f"the autoencoder reads "
            f"{len(details['autoencoder']['inputs'])} of the features (none computed from labels; the training "
            f"details list those it left out)."
        )
    return notes


def run_train(settings: Settings, options: TrainOptions) -> dict[str, Any]:
    """Train, evaluate on the held-out test period, register; returns the summary the CLI prints."""
    if options.objective not in ("f1", "cost"):
        raise ValueError(f"objective must be 'f1' or 'cost', got {options.objective!r}")
    started = time.perf_counter()
    label_delay = settings.label_delay
    progress = tqdm(total=6, desc="reading data", unit="stage")
    transactions = read_labelled(options.data)
    users, merchants = load_profiles(options.data)
    features = featurize(transactions, label_delay=label_delay, users=users, merchants=merchants)
    progress.set_description("built features")
    progress.update(1)
    timestamps = transactions["timestamp"]
    periods = time_periods(timestamps.min(), timestamps.max() + timedelta(seconds=1), label_delay=label_delay)
    splits = {
        name: take(name, transactions, features, FEATURE_NAMES, period)
        for name, period in (("train", periods.train), ("validation", periods.validation), ("test", periods.test))
    }
    budget = Budget.from_trials(options.trials, settings.seed)
    storage = Path(settings.data_dir).resolve() / "ray_results"
    with ray_runtime(settings):
        fitted = fit_models(
            splits["train"],
            splits["validation"],
            FEATURE_NAMES,
            FEATURE_VERSION,
            budget=budget,
            storage=storage,
            label_delay=label_delay,
            objective=options.objective,  # type: ignore[arg-type]
            distributed=options.distributed,
            anomaly_review_rate=settings.anomaly_review_rate,
            progress=progress,
        )
    bundle = fitted.bundle

    scorer = FraudScorer(bundle)
    test = splits["test"]
    test_scored = scorer.score(_features_frame(test, FEATURE_NAMES))  # evaluate replays the lane's level
    valid_scored = scorer.score(_features_frame(splits["validation"], FEATURE_NAMES))
    test_scores, valid_scores = test_scored["fraud_score"].to_numpy(), valid_scored["fraud_score"].to_numpy()
    policy = bundle.ensemble.policy
    bundle.metrics = {
        "test": evaluate(test.frame, test_scores, policy, test_scored["ae_score"].to_numpy()),
        "validation": evaluate(splits["validation"].frame, valid_scores, policy, valid_scored["ae_score"].to_numpy()),
    }
    bundle.data_summary = {
        "source": str(options.data),
        "label_delay_days": settings.label_delay_days,
        "periods": {name: split.summary() for name, split in splits.items()},
    }
    bundle.training = fitted.details
    train = splits["train"]  # features and inputs of the training period; scores of validation, never trained on
    train_inputs = transactions.loc[transactions["timestamp"].between(*periods.train, inclusive="left")]
    bundle.reference = build_reference(train.x, FEATURE_NAMES, valid_scores, inputs=input_missing_rates(train_inputs))
    progress.set_description("evaluated")
    progress.update(1)

    registry = registry_for(settings)
    reports_root = Path(settings.data_dir).resolve() / "reports"
    reports_root.mkdir(parents=True, exist_ok=True)
    report_dir = Path(tempfile.mkdtemp(prefix="pending-", dir=reports_root))
    report = write_report(
        report_dir,
        title="Fraud model evaluation",
        frame=test.frame,
        scores=test_scores,
        metrics=bundle.metrics["test"],
        policy=bundle.ensemble.policy,
        notes=ensemble_notes(fitted.details),
        details={"training": fitted.details, "data": bundle.data_summary},
    )
    attachments = {f"report/{path.name}": path.read_bytes() for path in report_dir.iterdir() if path.is_file()}
    version = registry.register(bundle, promote=options.promote, attachments=attachments)
    final_dir = report_dir.with_name(version)
    report_dir.rename(final_dir)
    progress.set_description(f"registered {version}")
    progress.update(1)
    progress.close()
    test_metrics = {k: v for k, v in bundle.metrics["test"].items() if k != "card_precision_at_100_per_day"}
    return {
        "version": version,
        "registry": registry.location,
        "champion": registry.resolve("champion") == version,
        "report": str(final_dir / report.name),
        "test": test_metrics,
        "ensemble": {k: fitted.details["ensemble"][k] for k in ("xgb_weight", "ae_weight", "policy", "merchant_floor")},
        "rows": {name: len(split) for name, split in splits.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def _features_frame(split: Split, feature_names: tuple[str, ...]) -> "Any":
    frame = pd.DataFrame(split.x, columns=list(feature_names))
    frame.insert(0, "transaction_id", split.frame["transaction_id"].to_numpy())
    return frame
