"""``fraudctl bench`` section "monitoring": scoring throughput with drift monitoring on and off, in one run.

The same app is deployed with ``FRAUD_MONITORING_ENABLED`` off, on, on, off (``PLAN``: a machine whose load drifts
during the run weighs on both sides alike), and each deployment is measured on the batch endpoint
(1,000 transactions a request) and on single transactions at concurrency 32, all transactions it has not seen.
The cost is ``1 - on / off`` of the median throughputs; the goal is at most 5 %. On a shared 2-core machine the
spread between two deployments of the same kind can exceed that, so beside it the section times the monitoring
work itself in-process: the scoring core (``FraudDetector``) on batches of 1,000 with a reporter attached, and the
reporter's flush of each batch (binning, the decisions kept, the call to the actor), as a share of the scoring.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from typing import Any

from ray import serve

from cluster.config import Settings
from cluster.waiting import free_port
from fraudctl.bench.environment import trained_environment
from fraudctl.bench.loadgen import run_load
from fraudctl.bench.serving import (
    BATCH_CONCURRENCY,
    BATCH_SIZE,
    batch_bodies,
    history_records,
    warm_profiles,
    with_cpu,
)
from serve.app import build_app
from serve.monitoring import MonitoringReporter
from serve.runtime import start_serve, stop_serve
from serve.sdk import FraudDetector

PLAN = (False, True, True, False)
BATCH_REQUESTS = 24
SINGLE_REQUESTS = 1500
SINGLE_CONCURRENCY = 32
MAX_SECONDS = 60.0
COST_GOAL = 0.05
FLUSH_BATCHES = 10


def _measure(base_url: str, batches: list[bytes], singles: list[bytes]) -> dict[str, Any]:
    run_load(f"{base_url}/api/check-fraud/batch", lambda i: batches[i], requests=1)  # warm-up of the new replicas
    batch = with_cpu(
        lambda: run_load(
            f"{base_url}/api/check-fraud/batch",
            lambda i: batches[1 + i],
            requests=BATCH_REQUESTS,
            concurrency=BATCH_CONCURRENCY,
            max_seconds=MAX_SECONDS * 2,
        ),
        transactions_per_request=BATCH_SIZE,
    )
    single = with_cpu(
        lambda: run_load(
            f"{base_url}/api/check-fraud",
            lambda i: singles[i],
            requests=SINGLE_REQUESTS,
            concurrency=SINGLE_CONCURRENCY,
            max_seconds=MAX_SECONDS,
        )
    )
    return {
        "batch_tx_per_s": round(batch["rps"] * BATCH_SIZE, 0) if batch["rps"] else None,
        "single_c32_rps": single["rps"],
        "single_c32_p99_ms": single.get("p99_ms"),
        "errors": batch["errors"] + single["errors"],
    }


def _cost(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    medians = {
        state: statistics.median(run[key] for run in runs if run["monitoring"] == state and run[key])
        for state in ("off", "on")
    }
    return {**medians, "cost": round(1 - medians["on"] / medians["off"], 3)}


def _flush_share(settings: Settings, records: list[dict[str, Any]]) -> dict[str, Any]:
    """In-process: scoring time and flush time per 1,000 transactions, and their ratio."""
    reporter = MonitoringReporter(settings)
    detector = FraudDetector(settings, feature_state="bench-monitoring", monitor=reporter)
    sample = [
        {**r, "transaction_id": f"{r['transaction_id']}-flush{i}"}
        for i, r in enumerate(records[-(FLUSH_BATCHES + 1) * BATCH_SIZE :])
    ]
    detector.predict_batch(sample[:BATCH_SIZE])  # warm-up
    reporter.flush()
    scoring_s = flush_s = 0.0
    for start in range(BATCH_SIZE, len(sample), BATCH_SIZE):
        started = time.perf_counter()
        detector.predict_batch(sample[start : start + BATCH_SIZE])
        scored = time.perf_counter()
        reporter.flush()
        flush_s += time.perf_counter() - scored
        scoring_s += scored - started
    detector.features.shutdown()
    per_thousand = 1000.0 * BATCH_SIZE / (len(sample) - BATCH_SIZE)
    return {
        "scoring_ms_per_1000_tx": round(scoring_s * per_thousand, 2),
        "flush_ms_per_1000_tx": round(flush_s * per_thousand, 2),
        "share": round(flush_s / scoring_s, 4),
    }


def bench_monitoring(settings: Settings) -> dict[str, Any]:
    base = settings.model_copy(update={"api_port": free_port(), "api_key": "bench", "serve_max_replicas": 1})
    with trained_environment(base) as (live, data, version):
        records = history_records(data)
        base_url = f"http://{live.api_host}:{live.api_port}"
        runs: list[dict[str, Any]] = []
        batches = batch_bodies(records, len(PLAN) * (BATCH_REQUESTS + 1))
        start_serve(live)
        try:
            for index, enabled in enumerate(PLAN):
                serve.run(
                    build_app(live.model_copy(update={"monitoring_enabled": enabled})), name="fraud", route_prefix="/"
                )
                if index == 0:
                    warm_profiles(base_url, records)
                mine = batches[index * (BATCH_REQUESTS + 1) : (index + 1) * (BATCH_REQUESTS + 1)]
                singles = [
                    json.dumps({**r, "transaction_id": f"{r['transaction_id']}-m{index}"}).encode()
                    for r in records[-SINGLE_REQUESTS:]
                ]
                runs.append({"monitoring": "on" if enabled else "off", **_measure(base_url, mine, singles)})
            with urllib.request.urlopen(f"{base_url}/api/monitoring", timeout=60) as response:
                view = json.load(response)
            in_process = _flush_share(live, records)
        finally:
            stop_serve(live)
    batch, single = _cost(runs, "batch_tx_per_s"), _cost(runs, "single_c32_rps")
    return {
        "model_version": version,
        "runs": runs,
        "batch_tx_per_s": batch,
        "single_c32_rps": single,
        "in_process": in_process,
        "monitoring_view": {
            "scored": view["scored"],
            "compared_rows": view["compared_rows"],
            "drifted": view["drifted"],
            "score_psi": view["score"]["psi"],
        },
        "goals": {"cost_max": COST_GOAL},
        "within_goal": batch["cost"] <= COST_GOAL and single["cost"] <= COST_GOAL,
        "in_process_within_goal": in_process["share"] <= COST_GOAL,
    }
