"""``fraudctl bench``: each stage contributes a section of figures; all print as one JSON object.

Ratios are measured within one run so a noisy shared machine affects both sides alike.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from typing import Any

from cluster.config import Settings
from fraudctl.bench.features import bench_features_offline, bench_features_online
from fraudctl.bench.ingest import bench_ingest_log
from fraudctl.bench.monitoring import bench_monitoring
from fraudctl.bench.producers import bench_producers
from fraudctl.bench.rules import bench_rules
from fraudctl.bench.serving import bench_serving
from fraudctl.bench.state import bench_feature_state
from fraudctl.bench.stream import bench_stream
from fraudctl.bench.training import bench_training

# Each section takes Settings and returns a dict of figures.
SECTIONS: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "producers": bench_producers,
    "training": bench_training,
    "serving": bench_serving,
    "features_offline": bench_features_offline,
    "features_online": bench_features_online,
    "feature_state": bench_feature_state,
    "ingest_log": bench_ingest_log,
    "stream": bench_stream,
    "rules": bench_rules,
    "monitoring": bench_monitoring,
}


def run_bench(settings: Settings, only: list[str] | None = None) -> dict[str, Any]:
    unknown = set(only or ()) - SECTIONS.keys()
    if unknown:
        raise ValueError(f"unknown bench section(s): {sorted(unknown)}; known: {sorted(SECTIONS)}")
    figures: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    with redirect_stdout(sys.stderr):  # stdout carries only the JSON; Ray relays worker and raylet logs to stdout
        for name, section in SECTIONS.items():
            if only and name not in only:
                continue
            started = time.perf_counter()
            figures[name] = section(settings)
            figures[name]["section_seconds"] = round(time.perf_counter() - started, 1)
    return figures
