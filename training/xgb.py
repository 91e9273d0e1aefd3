"""XGBoost: Ray Tune search (ASHA, early stopping on the mean validation average precision of rolling time folds),
then the final fit.

Each trial runs ``xgboost.cv`` over the rolling time folds (``training.data.rolling_folds``) with one thread and
half a CPU reserved, so two trials share the two cores, and reports every boosting round's mean over the folds
through Tune's XGBoost callback so ASHA can stop weak trials early. One validation period of a few days holds a
few hundred frauds: a choice made on it alone follows its noise, the folds' mean less so.
The library defaults are validated the same way outside the search (ASHA would stop them at its first rung when
they learn slower than the trials there) and stay the model unless a tuned configuration beats their validation
average precision (``select``); validation ROC-AUC is reported beside it.

The score is held to rise with a merchant's and a category's confirmed fraud (monotone constraints), a prior that
lets a few labelled incidents teach a rise that holds at the next merchant hit; but where merchant risk reads
differently (a terminal's risk from one or two labels, say) it can cost ranking. So the library defaults are
validated with and without the constraints first, and the search runs in the family that ranks better, the
constraints kept on a tie (``choose_constraints``).

The final fit runs in the driver, or, with ``distributed=True``, with Ray Train's ``XGBoostTrainer`` (V2 API)
for data that outgrows one node.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray.data
import ray.train
import xgboost as xgb
from ray import tune
from ray.train.xgboost import RayTrainReportCallback, XGBoostTrainer
from ray.tune.integration.xgboost import TuneReportCheckpointCallback

from cluster.features import RISING_WITH_MERCHANT_FRAUD
from training.data import Fold, folds_with_fraud
from training.tuning import run_search

METRIC = "valid-aucpr"
RANKING_METRIC = "valid-auc"
EARLY_STOPPING_ROUNDS = 30
LABEL = "label"
MODEL_FILE = "model.ubj"  # the name RayTrainReportCallback.get_model reads


@dataclass(frozen=True)
class XGBSearch:
    """The tuning budget."""

    trials: int = 8
    max_rounds: int = 400
    grace_rounds: int = 25
    cpus_per_trial: float = 0.5
    seed: int = 42


# xgboost's own defaults, spelled out: the reference a tuned configuration has to beat on validation
LIBRARY_DEFAULTS = {
    "max_depth": 6,
    "eta": 0.3,
    "min_child_weight": 1.0,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "scale_pos_weight": 1.0,
}


@dataclass
class XGBTuning:
    """What was chosen (``selected``: "tuned" or "library defaults"): its parameters, best round count and
    validation figures, the defaults' result and every trial's."""

    params: dict[str, Any]
    rounds: int
    valid_aucpr: float
    valid_auc: float
    selected: str
    defaults: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)
    monotone: dict[str, Any] = field(default_factory=dict)  # ``choose_constraints``' comparison


def base_params(nthread: int, seed: int) -> dict[str, Any]:
    """Early stopping watches the last evaluation metric, aucpr; auc is reported beside it."""
    return {
        "objective": "binary:logistic",
        "eval_metric": ["auc", "aucpr"],
        "tree_method": "hist",
        "nthread": nthread,
        "seed": seed,
    }


def rising_with_merchant_fraud(feature_names: tuple[str, ...]) -> dict[str, Any]:
    """The parameter holding XGBoost's score to rise with ``RISING_WITH_MERCHANT_FRAUD`` (none when no such
    feature is among ``feature_names``)."""
    rising = {name: 1 for name in feature_names if name in RISING_WITH_MERCHANT_FRAUD}
    return {"monotone_constraints": rising} if rising else {}


def search_space(y_train: np.ndarray) -> dict[str, Any]:
    """Depth, learning rate, child weight, sub-sampling, class weighting and the round budget."""
    positives = max(int(y_train.sum()), 1)
    imbalance = (len(y_train) - positives) / positives
    return {
        "max_depth": tune.randint(3, 9),
        "eta": tune.loguniform(0.02, 0.3),
        "min_child_weight": tune.loguniform(0.5, 20.0),
        "subsample": tune.uniform(0.6, 1.0),
        "colsample_bytree": tune.uniform(0.5, 1.0),
        "scale_pos_weight": tune.loguniform(1.0, max(1.5, min(imbalance, 400.0) ** 0.5)),
        "num_boost_round": tune.choice([150, 250, 400]),
    }


def _matrix(x: np.ndarray, y: np.ndarray | None, feature_names: tuple[str, ...]) -> xgb.DMatrix:
    return xgb.DMatrix(x, label=y, feature_names=list(feature_names), nthread=1)


def fold_means(report: dict[str, Any]) -> dict[str, float]:
    """``xgboost.cv`` logs (mean, std) across folds; Tune gets the mean."""
    return {k: float(v[0]) if isinstance(v, tuple) else float(v) for k, v in report.items()}


def _cross_validate(
    config: dict[str, Any], data: dict[str, Any], *, nthread: int, callbacks: list[Any]
) -> dict[str, list[float]]:
    """``xgboost.cv`` over the rolling time folds, early stopping on the folds' mean validation aucpr; the mean
    validation metrics per round."""
    params = {
        **base_params(nthread=nthread, seed=data["seed"]),
        **data["constraints"],
        **{k: v for k, v in config.items() if k != "num_boost_round"},
    }
    history = xgb.cv(
        params,
        _matrix(data["x"], data["y"], data["feature_names"]),
        num_boost_round=min(config["num_boost_round"], data["max_rounds"]),
        folds=data["folds"],
        early_stopping_rounds=EARLY_STOPPING_ROUNDS,
        verbose_eval=False,
        as_pandas=False,
        callbacks=callbacks,
    )
    return {"aucpr": history["test-aucpr-mean"], "auc": history["test-auc-mean"]}


def _trial(config: dict[str, Any], *, data: dict[str, Any]) -> None:
    """One Tune trial: the folds' mean validation aucpr and auc reported every round."""
    _cross_validate(
        config,
        data,
        nthread=1,
        callbacks=[
            TuneReportCheckpointCallback(
                metrics={METRIC: "test-aucpr", RANKING_METRIC: "test-auc"},
                frequency=0,
                checkpoint_at_end=False,
                results_postprocessing_fn=fold_means,
            )
        ],
    )


def validate_defaults(data: dict[str, Any], *, nthread: int = 2) -> dict[str, Any]:
    """The library defaults with the trials' folds and round selection (the round where the mean validation
    aucpr peaks), as a result in ``run_search``'s shape."""
    history = _cross_validate(
        {**LIBRARY_DEFAULTS, "num_boost_round": data["max_rounds"]}, data, nthread=nthread, callbacks=[]
    )
    best = int(np.argmax(history["aucpr"]))
    return {
        "config": dict(LIBRARY_DEFAULTS),
        "iteration": best + 1,
        "score": float(history["aucpr"][best]),
        "at_best": {RANKING_METRIC: float(history["auc"][best])},
        "iterations_run": len(history["aucpr"]),
    }


def choose_constraints(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The library defaults validated with ``data``'s constraints and without (same folds, same rounds rule); the
    constraints stay unless the defaults rank strictly better free. Returns the data the search runs on, the
    defaults' result in that family, and the comparison."""
    held = validate_defaults(data)
    if not data["constraints"]:
        return data, held, {"constrained": False, "reason": "no merchant-fraud feature"}
    free_data = {**data, "constraints": {}}
    free = validate_defaults(free_data)
    constrained = free["score"] <= held["score"]
    comparison = {
        "constrained": constrained,
        "defaults_valid_aucpr_constrained": held["score"],
        "defaults_valid_aucpr_unconstrained": free["score"],
        "defaults_valid_auc_constrained": held["at_best"][RANKING_METRIC],
        "defaults_valid_auc_unconstrained": free["at_best"][RANKING_METRIC],
    }
    return (data, held, comparison) if constrained else (free_data, free, comparison)


def select(trials: list[dict[str, Any]], defaults: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The best validation aucpr among the defaults and the trials; the defaults win ties, so tuning replaces them
    only with a configuration that validates better."""
    best = max([defaults, *trials], key=lambda t: t["score"])
    return best, "library defaults" if best is defaults else "tuned"


def tune_xgboost(
    x: np.ndarray, y: np.ndarray, folds: list[Fold], feature_names: tuple[str, ...], *, search: XGBSearch, storage: Path
) -> XGBTuning:
    """Search hyperparameters and rounds with Ray Tune + ASHA on the folds' mean validation aucpr (``folds``: row
    positions of ``x``, from ``training.data.rolling_folds``, each with fraud on both sides) and choose against the library defaults (``select``);
    Ray must be initialised."""
    if len(folds_with_fraud(folds, y)) < len(folds):
        raise ValueError(
            "is_fraud: a fold has no fraud in its training or validation rows; XGBoost needs frauds "
            "in both to be tuned (training.data.folds_with_fraud leaves such folds out)"
        )
    data = {
        "x": x,
        "y": y,
        "folds": [(fold.train, fold.valid) for fold in folds],
        "feature_names": feature_names,
        "seed": search.seed,
        "max_rounds": search.max_rounds,
        "constraints": rising_with_merchant_fraud(feature_names),
    }
    data, defaults, monotone = choose_constraints(data)
    trials = run_search(
        _trial,
        data,
        space=search_space(y[folds[-1].train]),
        metric=METRIC,
        max_t=search.max_rounds,
        grace=search.grace_rounds,
        trials=search.trials,
        cpus_per_trial=search.cpus_per_trial,
        seed=search.seed,
        storage=storage,
        name="xgboost",
        report_at_best=(RANKING_METRIC,),
    )
    best, selected = select(trials, defaults)
    params = {**{k: v for k, v in best["config"].items() if k != "num_boost_round"}, **data["constraints"]}
    return XGBTuning(
        params=params,
        rounds=best["iteration"],
        valid_aucpr=best["score"],
        valid_auc=best["at_best"][RANKING_METRIC],
        selected=selected,
        defaults=defaults,
        trials=trials,
        monotone=monotone,
    )


def fit_xgboost(
    x: np.ndarray,
    y: np.ndarray,
    feature_names: tuple[str, ...],
    params: dict[str, Any],
    rounds: int,
    *,
    nthread: int = 2,
    seed: int = 42,
) -> xgb.Booster:
    """The final model, fitted in this process with the tuned parameters and round count."""
    matrix = xgb.DMatrix(x, label=y, feature_names=list(feature_names), nthread=nthread)
    return xgb.train(
        {**base_params(nthread=nthread, seed=seed), **params},
        matrix,
        num_boost_round=rounds,
    )


def _distributed_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: fit on this worker's shard (XGBoost's collective syncs the histograms); rank 0 reports
    the model once at the end, since a report per round is a cross-worker barrier."""
    shard = ray.train.get_dataset_shard("train").materialize().to_pandas()
    matrix = xgb.DMatrix(shard[list(config["feature_names"])], label=shard[LABEL])
    booster = xgb.train(config["params"], matrix, num_boost_round=config["rounds"])
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            booster.save_model(str(Path(folder) / MODEL_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({"rounds": booster.num_boosted_rounds()}, checkpoint=checkpoint)


def fit_xgboost_distributed(
    x: np.ndarray,
    y: np.ndarray,
    feature_names: tuple[str, ...],
    params: dict[str, Any],
    rounds: int,
    *,
    storage: Path,
    workers: int = 2,
    cpus_per_worker: float = 0.5,
    seed: int = 42,
) -> xgb.Booster:
    """The final fit with Ray Train's ``XGBoostTrainer`` (V2): data-parallel workers with fractional CPUs."""
    frame = pd.DataFrame(x, columns=list(feature_names))
    frame[LABEL] = y
    trainer = XGBoostTrainer(
        _distributed_loop,
        train_loop_config={
            "params": {**base_params(nthread=1, seed=seed), **params},
            "rounds": rounds,
            "feature_names": list(feature_names),
        },
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=f"xgboost-distributed-{uuid.uuid4().hex[:8]}", storage_path=str(Path(storage).resolve())
        ),
        datasets={"train": ray.data.from_pandas(frame)},
    )
    result = trainer.fit()
    return RayTrainReportCallback.get_model(result.checkpoint)
