"""The Ray Tune run both models share: ASHA, a seeded random search two trials at a time, progress on stderr.

Tune's own tables would go to stdout, where the CLI prints its JSON; a tqdm bar of finished trials and the best
score so far shows progress instead. Import this module lazily: it loads Ray Tune.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator
from tqdm.auto import tqdm

CONCURRENT_TRIALS = 2


_BARS: dict[str, tqdm] = {}  # progress bars of running searches, by key: callbacks are pickled, bars cannot be


class TrialProgress(Callback):
    """Counts finished trials and shows the best score so far on the search's bar (driver side)."""

    def __init__(self, bar_key: str, metric: str) -> None:
        self.bar_key = bar_key
        self.metric = metric
        self.best = float("-inf")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        bar = _BARS.get(self.bar_key)
        if bar is not None and self.metric in result and result[self.metric] > self.best:
            self.best = result[self.metric]
            bar.set_postfix_str(f"best {self.metric} {self.best:.4f}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        bar = _BARS.get(self.bar_key)
        if bar is not None:
            bar.update(1)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.on_trial_complete(iteration, trials, trial)


def run_search(
    trial: Callable[..., None],
    data: dict[str, Any],
    *,
    space: dict[str, Any],
    metric: str,
    max_t: int,
    grace: int,
    trials: int,
    cpus_per_trial: float,
    seed: int,
    storage: Path,
    name: str,
    report_at_best: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Run ``trial(config, data=data)`` over ``space``; per finished trial: its config, the iteration at which
    ``metric`` peaked, that peak and the ``report_at_best`` metrics at that iteration. Ray must be initialised."""
    key = f"{name}-{uuid.uuid4().hex[:8]}"
    with tqdm(total=trials, desc=f"tuning {name}", unit="trial") as bar:
        _BARS[key] = bar
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trial, data=data), {"cpu": cpus_per_trial}),
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode="max",
                num_samples=trials,
                reuse_actors=True,  # no process start per trial
                scheduler=ASHAScheduler(max_t=max_t, grace_period=min(grace, max_t), reduction_factor=3),
                search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=CONCURRENT_TRIALS),
            ),
            run_config=tune.RunConfig(
                name=key, storage_path=str(Path(storage).resolve()), verbose=0, callbacks=[TrialProgress(key, metric)]
            ),
        )
        try:
            with contextlib.redirect_stdout(sys.stderr):  # Tune's summary tables print even at verbose=0
                results = tuner.fit()
        finally:
            del _BARS[key]
    finished = []
    for result in results:
        history = result.metrics_dataframe
        if result.error is not None or history is None or not {metric, *report_at_best} <= set(history):
            continue
        best_row = history.loc[history[metric].idxmax()]
        finished.append(
            {
                "config": dict(result.config),
                "iteration": int(best_row["training_iteration"]),
                "score": float(best_row[metric]),
                "at_best": {m: float(best_row[m]) for m in report_at_best},
                "iterations_run": int(history["training_iteration"].max()),
            }
        )
    if not finished:
        raise RuntimeError(f"every {name} trial failed; see the Ray Tune logs in {storage}")
    return finished
