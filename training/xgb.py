"""XGBoost: Ray Tune search (ASHA, early stopping on validation average precision), then the final fit.

Each trial runs plain ``xgboost.train`` with one thread and half a CPU reserved, so two trials share the two
cores, and reports every boosting round through Tune's XGBoost callback so ASHA can stop weak trials early.
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

from training.tuning import run_search

METRIC = "valid-aucpr"
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


@dataclass
class XGBTuning:
    """What the search found: the best trial's parameters, its best round count and score, every trial's result."""
    params: dict[str, Any]
    rounds: int
    valid_aucpr: float
    trials: list[dict[str, Any]] = field(default_factory=list)


def base_params(nthread: int, seed: int) -> dict[str, Any]:
    return {"objective": "binary:logistic", "eval_metric": "aucpr", "tree_method": "hist",
            "nthread": nthread, "seed": seed}


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


def _trial(config: dict[str, Any], *, data: dict[str, Any]) -> None:
    """One Tune trial: ``xgboost.train`` reporting validation aucpr every round."""
    names = data["feature_names"]
    train = _matrix(data["x_train"], data["y_train"], names)
    valid = _matrix(data["x_valid"], data["y_valid"], names)
    params = {**base_params(nthread=1, seed=data["seed"]),
              **{k: v for k, v in config.items() if k != "num_boost_round"}}
    xgb.train(params, train, num_boost_round=min(config["num_boost_round"], data["max_rounds"]),
              evals=[(valid, "valid")], early_stopping_rounds=EARLY_STOPPING_ROUNDS, verbose_eval=False,
              callbacks=[TuneReportCheckpointCallback(metrics=[METRIC], frequency=0, checkpoint_at_end=False)])


def tune_xgboost(x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray,
                 feature_names: tuple[str, ...], *, search: XGBSearch, storage: Path) -> XGBTuning:
    """Search hyperparameters with Ray Tune + ASHA; Ray must be initialised."""
    if y_train.sum() == 0 or y_valid.sum() == 0:
        raise ValueError("is_fraud: training and validation periods each need at least one fraud to tune XGBoost")
    data = {"x_train": x_train, "y_train": y_train, "x_valid": x_valid, "y_valid": y_valid,
            "feature_names": feature_names, "seed": search.seed, "max_rounds": search.max_rounds}
    trials = run_search(_trial, data, space=search_space(y_train), metric=METRIC, max_t=search.max_rounds,
                        grace=search.grace_rounds, trials=search.trials, cpus_per_trial=search.cpus_per_trial,
                        seed=search.seed, storage=storage, name="xgboost")
    best = max(trials, key=lambda t: t["score"])
    params = {k: v for k, v in best["config"].items() if k != "num_boost_round"}
    return XGBTuning(params=params, rounds=best["iteration"], valid_aucpr=best["score"], trials=trials)


def fit_xgboost(x: np.ndarray, y: np.ndarray, feature_names: tuple[str, ...], params: dict[str, Any],
                rounds: int, *, nthread: int = 2, seed: int = 42) -> xgb.Booster:
    """The final model, fitted in this process with the tuned parameters and round count."""
    matrix = xgb.DMatrix(x, label=y, feature_names=list(feature_names), nthread=nthread)
    return xgb.train({**base_params(nthread=nthread, seed=seed), **params}, matrix, num_boost_round=rounds)


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


def fit_xgboost_distributed(x: np.ndarray, y: np.ndarray, feature_names: tuple[str, ...],
                            params: dict[str, Any], rounds: int, *, storage: Path, workers: int = 2,
                            cpus_per_worker: float = 0.5, seed: int = 42) -> xgb.Booster:
    """The final fit with Ray Train's ``XGBoostTrainer`` (V2): data-parallel workers with fractional CPUs."""
    frame = pd.DataFrame(x, columns=list(feature_names))
    frame[LABEL] = y
    trainer = XGBoostTrainer(
        _distributed_loop,
        train_loop_config={"params": {**base_params(nthread=1, seed=seed), **params}, "rounds": rounds,
                           "feature_names": list(feature_names)},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=ray.train.RunConfig(name=f"xgboost-distributed-{uuid.uuid4().hex[:8]}", storage_path=str(Path(storage).resolve())),
        datasets={"train": ray.data.from_pandas(frame)},
    )
    result = trainer.fit()
    return RayTrainReportCallback.get_model(result.checkpoint)
