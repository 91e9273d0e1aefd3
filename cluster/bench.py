"""``fraudctl bench``: each stage contributes a section of figures; all print as one JSON object.

Ratios are measured within one run so a noisy shared machine affects both sides alike.
"""

from __future__ import annotations

import importlib
import os
import platform
import time
from typing import Any, Callable

from cluster.config import Settings

# section name -> "module:function"; each function takes Settings and returns a dict of figures.
SECTIONS: dict[str, str] = {
    "producers": "simulation.producers:bench_producers",
    "training": "training.baseline:bench_training",
    "serving": "serve.bench:bench_serving",
    "features_offline": "cluster.offline_features:bench_features_offline",
    "features_online": "cluster.feature_state:bench_features_online",
}


def _load(target: str) -> Callable[[Settings], dict[str, Any]]:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def run_bench(settings: Settings, only: list[str] | None = None) -> dict[str, Any]:
    unknown = set(only or ()) - SECTIONS.keys()
    if unknown:
        raise ValueError(f"unknown bench section(s): {sorted(unknown)}; known: {sorted(SECTIONS)}")
    figures: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    for name, target in SECTIONS.items():
        if only and name not in only:
            continue
        started = time.perf_counter()
        figures[name] = _load(target)(settings)
        figures[name]["section_seconds"] = round(time.perf_counter() - started, 1)
    return figures
