"""``fraudctl bench`` section "serving": the scoring app against a composed and a single no-op app in the same
Serve mode, loaded by wrk (``fraudctl.bench.wrk``) when it is installed.

One run, one Ray, one Serve: latency p50/p99 and throughput at concurrency 1 and 32 for all three apps, and the batch
endpoint in transactions per second with the CPU each part of the system spent on it. Beside them, the scoring core
in-process (the SDK, one transaction at a time): what the app adds to the no-op's composition at least, as its
work is a feature-state round trip, the features and both models for the transaction, then the decision.
Everything runs in `fraudctl.bench.environment.trained_environment`: embedded AWS, simulated history with its profiles in
DynamoDB, and a small model trained for the run.
"""

from __future__ import annotations

import json
import tempfile
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
from fraudctl.bench.noop import build_noop_app, build_single_noop_app
from fraudctl.bench.wrk import run_wrk, write_bodies, wrk_path
from serve.app import build_app
from serve.runtime import start_serve, stop_serve
from serve.sdk import FraudDetector

SINGLE_REQUESTS = {1: 300, 32: 3000}  # concurrency: requests, for the Python generator (wrk runs for a time)
WRK_SECONDS = 10.0
WRK_WARMUP_S = 3.0
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


def with_cpu(load: Callable[[], dict[str, Any]], transactions_per_request: int = 1) -> dict[str, Any]:
    """A load's figures with the CPU each role spent per 1,000 transactions while it ran."""
    with cpu_by_role() as cpu:
        result = load()
    return {**result, **cpu_figures(cpu, (result["requests"] - result["errors"]) * transactions_per_request)}


def _single_load(url: str, records: list[dict[str, Any]], workdir: Path, tag: str) -> dict[str, Any]:
    """Latency and throughput at each concurrency, one transaction per request, with the CPU spent per 1,000: from
    wrk when it is installed (``make bench`` installs it), else from the Python generator, which says so."""
    if wrk_path() is not None:
        bodies = write_bodies(records, workdir / f"{tag}.bodies")
        run_wrk(url, bodies, connections=4, seconds=WRK_WARMUP_S, tag=f"{tag}-warm")
        return {
            f"concurrency_{c}": with_cpu(
                lambda c=c: run_wrk(url, bodies, connections=c, seconds=WRK_SECONDS, tag=f"{tag}-c{c}")
            )
            for c in SINGLE_REQUESTS
        }
    encoded = [json.dumps(r).encode() for r in records]
    run_load(url, lambda i: encoded[i % len(encoded)], requests=50, concurrency=4)  # warm-up
    return {
        f"concurrency_{c}": {
            **with_cpu(
                lambda c=c, n=n: run_load(
                    url,
                    lambda i, o=c * 100_000: encoded[(o + i) % len(encoded)],
                    requests=n,
                    concurrency=c,
                    max_seconds=MAX_SECONDS,
                )
            ),
            "load_generator": "python (wrk not installed)",
        }
        for c, n in SINGLE_REQUESTS.items()
    }


def batch_bodies(records: list[dict[str, Any]], count: int) -> list[bytes]:
    """``count`` batch bodies of transactions the app has not seen (ids made unique per body): a repeated id would
    be a replay, which the feature state answers from memory."""
    bodies = []
    for index in range(count):
        start = (index * BATCH_SIZE) % max(len(records) - BATCH_SIZE, 1)
        bodies.append(
            json.dumps(
                {
                    "transactions": [
                        {**r, "transaction_id": f"{r['transaction_id']}-b{index}"}
                        for r in records[start : start + BATCH_SIZE]
                    ]
                }
            ).encode()
        )
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
    bodies = [
        json.dumps({"transactions": firsts[i : i + BATCH_SIZE]}).encode() for i in range(0, len(firsts), BATCH_SIZE)
    ]
    run_load(f"{base_url}/api/check-fraud/batch", lambda i: bodies[i], requests=len(bodies))


def _sdk_single(settings: Settings, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The SDK (``serve.sdk.FraudDetector``, feature state of its own) scoring one transaction per call, warmed
    like the app: latency percentiles in ms. Run as a Ray task (``SDK_TASK_CPUS``), so the models get the
    threads they get in a replica, not the driver's."""
    detector = FraudDetector(settings, feature_state="bench-sdk")
    firsts = _firsts(records, "sdk-warm")
    for start in range(0, len(firsts), BATCH_SIZE):
        detector.predict_batch(firsts[start : start + BATCH_SIZE])
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
    with trained_environment(base) as (live, data, version), tempfile.TemporaryDirectory() as workdir:
        records = history_records(data)
        base_url = f"http://{live.api_host}:{live.api_port}"
        single_url = f"{base_url}/api/check-fraud"
        start_serve(live)
        try:
            serve.run(build_single_noop_app(live), name="noop_single", route_prefix="/")
            single_noop = _single_load(single_url, records, Path(workdir), "single")
            serve.delete("noop_single")
            serve.run(build_noop_app(live), name="noop", route_prefix="/")
            noop = _single_load(single_url, records, Path(workdir), "noop")
            serve.delete("noop")
            serve.run(build_app(live), name="fraud", route_prefix="/")
            warm_profiles(base_url, records)
            app = _single_load(single_url, records, Path(workdir), "app")
            batches = batch_bodies(records, BATCH_WARMUP + BATCH_REQUESTS)
            run_load(
                f"{base_url}/api/check-fraud/batch",
                lambda i: batches[i],
                requests=BATCH_WARMUP,
                concurrency=BATCH_CONCURRENCY,
            )
            alerts_before = _alerts(base_url)
            batch = with_cpu(
                lambda: run_load(
                    f"{base_url}/api/check-fraud/batch",
                    lambda i: batches[BATCH_WARMUP + i],
                    requests=BATCH_REQUESTS,
                    concurrency=BATCH_CONCURRENCY,
                    max_seconds=120,
                ),
                transactions_per_request=BATCH_SIZE,
            )
            batch["alerts"] = _alerts(base_url) - alerts_before
            sdk = ray.get(ray.remote(num_cpus=SDK_TASK_CPUS)(_sdk_single).remote(live, records))
        finally:
            stop_serve(live)
    c1, c32 = "concurrency_1", "concurrency_32"
    return {
        "mode": "haproxy+throughput-optimized" if live.serve_haproxy else "default proxy",
        "load_generator": app[c1].get("load_generator", "wrk"),
        "model_version": version,
        "single_noop": single_noop,
        "noop": noop,
        "app": app,
        "sdk_concurrency_1": sdk,
        "p50_ratio_c1": round(app[c1]["p50_ms"] / noop[c1]["p50_ms"], 2),
        "p50_ratio_c1_vs_single": round(app[c1]["p50_ms"] / single_noop[c1]["p50_ms"], 2),
        "p50_ratio_c1_floor": round((noop[c1]["p50_ms"] + sdk["p50_ms"]) / noop[c1]["p50_ms"], 2),
        "throughput_ratio_c32": round(app[c32]["rps"] / noop[c32]["rps"], 2),
        "batch": {
            **batch,
            "batch_size": BATCH_SIZE,
            "load_generator": "python (bodies of 1,000 transactions)",
            "transactions_per_s": round(batch["rps"] * BATCH_SIZE, 0) if batch["rps"] else None,
            "alerts_per_s": round(batch["alerts"] * batch["rps"] / batch["requests"], 1) if batch["rps"] else None,
        },
        "goals": {
            "p50_ratio_c1_max": 4.0,
            "p50_ratio_c1_aim": 2.5,
            "throughput_ratio_c32_min": 1.0,
            "throughput_ratio_c32_aim": 1.5,
            "p99_ms_c32_max": 80,
            "p99_ms_c32_aim": 40,
            "batch_tx_per_s_min": 20_000,
            "batch_tx_per_s_aim": 40_000,
        },
    }
