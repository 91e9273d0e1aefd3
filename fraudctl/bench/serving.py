"""``fraudctl bench`` section "serving": the scoring app against a composed no-op app in the same Serve mode.

One run, one Ray, one Serve: latency p50/p99 and throughput at concurrency 1 and 32 for both apps, and the batch
endpoint in transactions per second with the CPU each part of the system spent on it. Beside them, the scoring core
in-process (the SDK, one transaction at a time): what the app adds to the no-op's composition at least, as its
work is a feature-state round trip, the features and both models for the transaction, then the decision.
Everything runs in `fraudctl.bench.environment.trained_environment`: embedded AWS, simulated history with its profiles in
DynamoDB, and a small model trained for the run.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray import serve

from cluster.config import Settings
from cluster.schema import TIMESTAMP_FORMAT
from cluster.waiting import free_port
from fraudctl.bench.cpu import cpu_by_role, cpu_figures
from fraudctl.bench.environment import trained_environment
from fraudctl.bench.loadgen import latency_figures, run_load
from fraudctl.bench.noop import build_noop_app
from serve.app import build_app
from serve.runtime import start_serve, stop_serve
from serve.sdk import FraudDetector

SINGLE_REQUESTS = {1: 300, 32: 3000}
SDK_REQUESTS = 300
SDK_TASK_CPUS = 0.2
BATCH_SIZE = 1000
BATCH_REQUESTS = 48
BATCH_WARMUP = 2
BATCH_CONCURRENCY = 8  # batches in flight: fewer leave the pipeline's stages idle in turn
MAX_SECONDS = 30.0


def history_records(data: Path) -> list[dict[str, Any]]:
    """The simulated history as API transactions: no labels, canonical timestamps, absent fields left out."""
    frame = pd.read_parquet(data).drop(columns=["is_fraud", "fraud_scenario"], errors="ignore")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.strftime(TIMESTAMP_FORMAT)
    return [{k: v for k, v in row.items() if v is not None and v == v} for row in frame.to_dict(orient="records")]


def measured_load(url: str, bodies: Callable[[int], bytes], *, requests: int, concurrency: int, max_seconds: float,
                   transactions_per_request: int = 1) -> dict[str, Any]:
    """``run_load``'s figures with the CPU each role spent per 1,000 transactions while it ran."""
    with cpu_by_role() as cpu:
        result = run_load(url, bodies, requests=requests, concurrency=concurrency, max_seconds=max_seconds)
    return {**result, **cpu_figures(cpu, (result["requests"] - result["errors"]) * transactions_per_request)}


def _single_load(url: str, bodies: list[bytes]) -> dict[str, Any]:
    """Latency and throughput at each concurrency, with the CPU spent per 1,000 requests (one transaction each)."""
    run_load(url, lambda i: bodies[i % len(bodies)], requests=50, concurrency=4)  # warm-up
    return {f"concurrency_{c}": measured_load(url, lambda i, o=c * 100_000: bodies[(o + i) % len(bodies)],
                                               requests=n, concurrency=c, max_seconds=MAX_SECONDS)
            for c, n in SINGLE_REQUESTS.items()}


def batch_bodies(records: list[dict[str, Any]], count: int) -> list[bytes]:
    """``count`` batch bodies of transactions the app has not seen (ids made unique per body): a repeated id would
    be a replay, which the feature state answers from memory."""
    bodies = []
    for index in range(count):
        start = (index * BATCH_SIZE) % max(len(records) - BATCH_SIZE, 1)
        bodies.append(json.dumps({"transactions": [{**r, "transaction_id": f"{r['transaction_id']}-b{index}"}
                                                   for r in records[start:start + BATCH_SIZE]]}).encode())
    return bodies


def _firsts(records: list[dict[str, Any]], tag: str) -> list[dict[str, Any]]:
    """One transaction of every user and merchant, under new ids: run first, so the measured requests meet the
    steady state (profiles in the TTL cache) rather than a DynamoDB read per first-seen user."""
    seen: set[str] = set()
    firsts = []
    for record in records:
        if record["user_id"] not in seen or record["merchant_id"] not in seen:
            seen.update((record["user_id"], record["merchant_id"]))
            firsts.append({**record, "transaction_id": f"{record['transaction_id']}-{tag}"})
    return firsts


def warm_profiles(base_url: str, records: list[dict[str, Any]]) -> None:
    firsts = _firsts(records, "warm")
    bodies = [json.dumps({"transactions": firsts[i:i + BATCH_SIZE]}).encode() for i in range(0, len(firsts), BATCH_SIZE)]
    run_load(f"{base_url}/api/check-fraud/batch", lambda i: bodies[i], requests=len(bodies))


def _sdk_single(settings: Settings, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The SDK (``serve.sdk.FraudDetector``, feature state of its own) scoring one transaction per call, warmed
    like the app: latency percentiles in ms. Run as a Ray task (``SDK_TASK_CPUS``), so the models get the
    threads they get in a replica, not the driver's."""
    detector = FraudDetector(settings, feature_state="bench-sdk")
    firsts = _firsts(records, "sdk-warm")
    for start in range(0, len(firsts), BATCH_SIZE):
        detector.predict_batch(firsts[start:start + BATCH_SIZE])
    latencies = []
    for index, record in enumerate(records[-SDK_REQUESTS:]):
        started = time.perf_counter()
        detector.predict({**record, "transaction_id": f"{record['transaction_id']}-sdk{index}"})
        latencies.append((time.perf_counter() - started) * 1000.0)
    detector.features.shutdown()
    return latency_figures(latencies)


def _alerts(base_url: str) -> int:
    with urllib.request.urlopen(f"{base_url}/api/stats", timeout=30) as response:
        return int(json.load(response)["alerts"])


def bench_serving(settings: Settings) -> dict[str, Any]:
    base = settings.model_copy(update={"api_port": free_port(), "api_key": "bench", "serve_max_replicas": 1})
    with trained_environment(base) as (live, data, version):
        records = history_records(data)
        bodies = [json.dumps(r).encode() for r in records]
        base_url = f"http://{live.api_host}:{live.api_port}"
        start_serve(live)
        try:
            serve.run(build_noop_app(live), name="noop", route_prefix="/")
            noop = _single_load(f"{base_url}/api/check-fraud", bodies)
            serve.delete("noop")
            serve.run(build_app(live), name="fraud", route_prefix="/")
            warm_profiles(base_url, records)
            app = _single_load(f"{base_url}/api/check-fraud", bodies)
            batches = batch_bodies(records, BATCH_WARMUP + BATCH_REQUESTS)
            run_load(f"{base_url}/api/check-fraud/batch", lambda i: batches[i], requests=BATCH_WARMUP,
                     concurrency=BATCH_CONCURRENCY)
            alerts_before = _alerts(base_url)
            batch = measured_load(f"{base_url}/api/check-fraud/batch", lambda i: batches[BATCH_WARMUP + i],
                                   requests=BATCH_REQUESTS, concurrency=BATCH_CONCURRENCY, max_seconds=120,
                                   transactions_per_request=BATCH_SIZE)
            batch["alerts"] = _alerts(base_url) - alerts_before
            sdk = ray.get(ray.remote(num_cpus=SDK_TASK_CPUS)(_sdk_single).remote(live, records))
        finally:
            stop_serve(live)
    c1, c32 = "concurrency_1", "concurrency_32"
    return {
        "mode": "haproxy+throughput-optimized" if live.serve_haproxy else "default proxy",
        "model_version": version,
        "noop": noop, "app": app, "sdk_concurrency_1": sdk,
        "p50_ratio_c1": round(app[c1]["p50_ms"] / noop[c1]["p50_ms"], 2),
        "p50_ratio_c1_floor": round((noop[c1]["p50_ms"] + sdk["p50_ms"]) / noop[c1]["p50_ms"], 2),
        "throughput_ratio_c32": round(app[c32]["rps"] / noop[c32]["rps"], 2),
        "batch": {**batch, "batch_size": BATCH_SIZE,
                  "transactions_per_s": round(batch["rps"] * BATCH_SIZE, 0) if batch["rps"] else None,
                  "alerts_per_s": round(batch["alerts"] * batch["rps"] / batch["requests"], 1) if batch["rps"] else None},
        "goals": {"p50_ratio_c1_max": 1.5, "throughput_ratio_c32_min": 0.6, "batch_tx_per_s_min": 20_000},
    }
