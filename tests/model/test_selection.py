"""XGBoost model selection: the library defaults are a candidate, validated like the trials, and a tuned
configuration replaces them only when it validates better (higher validation average precision)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from cluster.features import FEATURE_NAMES, build_features
from training.autoencoder import AESearch
from training.baseline import HandbookConfig, simulate_handbook
from training.data import rolling_folds, take
from training.ensemble import fit_ensemble, merchant_record
from training.pipeline import Budget, fit_models
from training.xgb import (
    LIBRARY_DEFAULTS,
    RANKING_METRIC,
    XGBSearch,
    base_params,
    choose_constraints,
    fold_means,
    rising_with_merchant_fraud,
    select,
    tune_xgboost,
    validate_defaults,
)

START = date(2026, 1, 1)


def small_history(*, days: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A small handbook-style history and its features."""
    history = simulate_handbook(
        HandbookConfig(
            customers=300,
            terminals=600,
            days=days,
            start=START,
            seed=seed,
            compromised_terminals_per_day=1.0,
            compromised_customers_per_day=1.0,
        )
    ).drop(columns=["fraud_scenario"])
    return history, build_features(history, label_delay=timedelta(days=7))


def day(n: int) -> pd.Timestamp:
    return pd.Timestamp(START, tz="UTC") + pd.Timedelta(days=n)


def result(aucpr: float, auc: float, rounds: int = 50) -> dict:
    return {
        "config": {"eta": 0.1},
        "iteration": rounds,
        "score": aucpr,
        "at_best": {RANKING_METRIC: auc},
        "iterations_run": rounds + 30,
    }


def test_the_defaults_stay_when_no_tuned_config_validates_better() -> None:
    defaults = result(0.80, 0.985)
    chosen, selected = select([result(0.78, 0.990), result(0.79, 0.980)], defaults)
    assert chosen is defaults and selected == "library defaults"


def test_the_tuned_config_with_the_best_validation_precision_replaces_the_defaults() -> None:
    defaults = result(0.70, 0.985)
    best = result(0.77, 0.984)
    chosen, selected = select([result(0.74, 0.988), best, result(0.69, 0.990)], defaults)
    assert chosen is best and selected == "tuned"


def test_the_defaults_win_a_tie() -> None:
    defaults = result(0.80, 0.99)
    chosen, selected = select([result(0.80, 0.99)], defaults)
    assert chosen is defaults and selected == "library defaults"


def test_the_reference_configuration_is_xgboosts_own_defaults() -> None:
    rng = np.random.default_rng(0)
    booster = xgb.train({}, xgb.DMatrix(rng.normal(size=(50, 3)), label=rng.integers(0, 2, 50)), num_boost_round=1)
    config = json.loads(booster.save_config())["learner"]
    train = config["gradient_booster"]["tree_train_param"]
    library = {
        "max_depth": float(train["max_depth"]),
        "eta": float(train["eta"]),
        "min_child_weight": float(train["min_child_weight"]),
        "subsample": float(train["subsample"]),
        "colsample_bytree": float(train["colsample_bytree"]),
        "scale_pos_weight": float(config["objective"]["reg_loss_param"]["scale_pos_weight"]),
    }
    assert library == pytest.approx(LIBRARY_DEFAULTS)  # xgboost stores its parameters as float32


def test_tuning_validates_the_defaults_and_chooses_the_best_validated_candidate(ray_session, tmp_path: Path) -> None:
    """Every candidate is judged by its mean over the same rolling time folds."""
    history, features = small_history(days=30, seed=3)
    window = take("train", history, features, FEATURE_NAMES, (day(8), day(30)))
    folds = rolling_folds(window.frame["timestamp"], label_delay=timedelta(days=2))
    tuning = tune_xgboost(
        window.x,
        window.y,
        folds,
        FEATURE_NAMES,
        search=XGBSearch(trials=3, max_rounds=60, grace_rounds=10),
        storage=tmp_path,
    )
    assert tuning.defaults["config"] == LIBRARY_DEFAULTS and 1 <= tuning.defaults["iteration"] <= 60
    assert len(tuning.trials) == 3 and all(RANKING_METRIC in t["at_best"] for t in tuning.trials)
    monotone = tuning.monotone
    constraints = rising_with_merchant_fraud(FEATURE_NAMES)
    assert tuning.valid_aucpr == max([tuning.defaults["score"], *(t["score"] for t in tuning.trials)])
    held, free = monotone["defaults_valid_aucpr_constrained"], monotone["defaults_valid_aucpr_unconstrained"]
    if monotone["constrained"]:
        assert free <= held == tuning.defaults["score"]
        assert tuning.params["monotone_constraints"] == constraints["monotone_constraints"]
    else:
        assert free > held and free == tuning.defaults["score"] and "monotone_constraints" not in tuning.params
    chosen = {k: v for k, v in tuning.params.items() if k != "monotone_constraints"}
    if tuning.selected == "library defaults":
        assert chosen == LIBRARY_DEFAULTS and tuning.rounds == tuning.defaults["iteration"]
    else:
        assert tuning.selected == "tuned" and tuning.valid_aucpr > tuning.defaults["score"]


def test_a_candidate_scores_the_mean_of_its_folds_not_the_last_fold_alone() -> None:
    history, features = small_history(days=30, seed=4)
    window = take("train", history, features, FEATURE_NAMES, (day(8), day(30)))
    folds = rolling_folds(window.frame["timestamp"], label_delay=timedelta(days=2))
    data = {
        "x": window.x,
        "y": window.y,
        "folds": [(fold.train, fold.valid) for fold in folds],
        "feature_names": FEATURE_NAMES,
        "seed": 42,
        "max_rounds": 40,
        "constraints": rising_with_merchant_fraud(FEATURE_NAMES),
    }
    defaults = validate_defaults(data)
    per_fold = []
    for train, valid, _ in folds:
        params = {**base_params(nthread=2, seed=42), **rising_with_merchant_fraud(FEATURE_NAMES), **LIBRARY_DEFAULTS}
        names = list(FEATURE_NAMES)
        booster = xgb.train(
            params,
            xgb.DMatrix(window.x[train], label=window.y[train], feature_names=names),
            num_boost_round=defaults["iteration"],
        )
        evaluation = booster.eval(xgb.DMatrix(window.x[valid], label=window.y[valid], feature_names=names), "valid")
        per_fold.append(float(evaluation.split("valid-aucpr:")[1].split()[0]))
    assert len(per_fold) == 3 and len(set(per_fold)) > 1
    assert defaults["score"] == pytest.approx(np.mean(per_fold), abs=1e-5)


def _risk_data(fraud: Callable[[np.ndarray], np.ndarray]) -> dict:
    """Two time-ordered folds over a merchant risk feature and the amount, fraud a function of the risk."""
    rng = np.random.default_rng(7)
    risk, amount = rng.uniform(0, 1, 6000), rng.lognormal(3, 1, 6000)
    blocks = np.array_split(np.arange(6000), 4)
    names = ("merchant_delayed_risk_7d", "amount")
    return {
        "x": np.column_stack([risk, amount]).astype(np.float32),
        "y": fraud(risk).astype(np.int8),
        "folds": [(np.concatenate(blocks[: i + 1]), blocks[i + 1]) for i in (1, 2)],
        "feature_names": names,
        "seed": 42,
        "max_rounds": 40,
        "constraints": rising_with_merchant_fraud(names),
    }


def test_the_search_runs_free_when_the_defaults_rank_better_without_the_rise() -> None:
    data = _risk_data(lambda risk: (risk > 0.4) & (risk < 0.6))  # fraud at middling risk only: no rise
    assert data["constraints"] == {"monotone_constraints": {"merchant_delayed_risk_7d": 1}}
    searched, defaults, comparison = choose_constraints(data)
    assert not comparison["constrained"] and searched["constraints"] == {}
    free, held = comparison["defaults_valid_aucpr_unconstrained"], comparison["defaults_valid_aucpr_constrained"]
    assert free > held + 0.2 and defaults["score"] == free


def test_the_rise_with_merchant_fraud_stays_when_validation_cannot_tell() -> None:
    data = _risk_data(lambda risk: risk > 0.7)  # both rank every fold perfectly
    searched, defaults, comparison = choose_constraints(data)
    assert comparison["constrained"] and searched is data
    free, held = comparison["defaults_valid_aucpr_unconstrained"], comparison["defaults_valid_aucpr_constrained"]
    assert free == held == defaults["score"] == pytest.approx(1.0, abs=1e-3)


def test_there_is_no_rise_to_hold_without_a_merchant_fraud_feature() -> None:
    data = {**_risk_data(lambda risk: risk > 0.7), "constraints": rising_with_merchant_fraud(("amount",))}
    searched, defaults, comparison = choose_constraints(data)
    assert searched is data and comparison == {"constrained": False, "reason": "no merchant-fraud feature"}
    assert defaults == validate_defaults(data)


def test_tune_reports_the_folds_mean_not_their_spread() -> None:
    assert fold_means({"valid-aucpr": (0.71, 0.05), "valid-auc": (0.98, 0.01)}) == {
        "valid-aucpr": 0.71,
        "valid-auc": 0.98,
    }


def test_the_shipped_models_calibrate_on_the_validation_period_they_never_trained_on(
    ray_session, tmp_path: Path
) -> None:
    """Weight from the folds; calibration and cut points from the final models' own validation scores."""
    history, features = small_history(days=40, seed=5)
    train = take("train", history, features, FEATURE_NAMES, (day(6), day(24)))
    valid = take("validation", history, features, FEATURE_NAMES, (day(31), day(40)))
    budget = Budget(
        xgb=XGBSearch(trials=2, max_rounds=40, grace_rounds=10), ae=AESearch(trials=2, max_epochs=3, grace_epochs=1)
    )
    fitted = fit_models(
        train, valid, FEATURE_NAMES, "test", budget=budget, storage=tmp_path, label_delay=timedelta(days=7)
    )
    details, bundle = fitted.details, fitted.bundle
    assert len(details["folds"]) >= 2 and details["calibrated_on"] == "validation period scored by the final models"
    expected, _ = fit_ensemble(
        valid.y,
        bundle.booster.inplace_predict(valid.x).astype(np.float64),
        bundle.anomaly.score(valid.x),
        valid.frame["amount"].to_numpy(),
        weight=bundle.ensemble.xgb_weight,
        record=merchant_record(valid.x, FEATURE_NAMES),
    )
    assert bundle.ensemble.policy == expected.policy and bundle.ensemble.calibration == expected.calibration
    fold_rows = np.mean([fold["train_rows"] for fold in details["folds"]])
    assert details["final_rounds"] == max(1, round(details["xgboost"]["rounds"] * len(train) / fold_rows))
