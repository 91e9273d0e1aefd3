"""``fraudctl bench`` section "serving": the scoring app against a composed no-op app in the same Serve mode.

One run, one Ray, one Serve: latency p50/p99 and throughput at concurrency 1 and 32 for both apps, and the batch
endpoint in transactions per second. Everything runs on an embedded AWS with a small model trained for the run.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

from cluster.aws import free_port
from cluster.config import Settings

SINGLE_REQUESTS = {1: 300, 32: 3000}
BATCH_SIZE = 1000
BATCH_REQUESTS = 24
BATCH_CONCURRENCY = 2
MAX_SECONDS = 30.0


def _single_load(url: str, bodies: list[bytes]) -> dict[str, Any]:
    from serve.loadgen import run_load

    run_load(url, lambda i: bodies[i % len(bodies)], requests=50, concurrency=4)  # warm-up
    return {f"concurrency_{c}": run_load(url, lambda i, o=c * 100_000: bodies[(o + i) % len(bodies)], requests=n,
                                         concurrency=c, max_seconds=MAX_SECONDS)
            for c, n in SINGLE_REQUESTS.items()}


def bench_serving(settings: Settings) -> dict[str, Any]:
    import pandas as pd
    from ray import serve

    from cluster.runtime import aws_endpoint, ray_runtime
    from serve.app import build_app
    from serve.loadgen import run_load
    from serve.noop import build_noop_app
    from serve.runtime import start_serve, stop_serve
    from simulation.history import run_simulate
    from training.pipeline import TrainOptions, run_train

    workdir = Path(tempfile.mkdtemp(prefix="fraud-bench-serving-"))
    base = settings.model_copy(update={"aws_mode": "embedded", "data_dir": workdir, "api_port": free_port(),
                                       "api_key": "bench", "serve_max_replicas": 1})
    with aws_endpoint(base) as live, ray_runtime(live, num_cpus=2):
        data = workdir / "history.parquet"
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the bench's JSON
            run_simulate(live, out=data, users=400, days=28, start=date(2026, 1, 1), seed=live.seed,
                         fraud_rate=0.02)
            trained = run_train(live, TrainOptions(data=data, trials=2))
        frame = pd.read_parquet(data).drop(columns=["is_fraud", "fraud_scenario"], errors="ignore")
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        records = [{k: v for k, v in row.items() if v is not None and v == v}
                   for row in frame.to_dict(orient="records")]
        bodies = [json.dumps(r).encode() for r in records]
        base_url = f"http://{live.api_host}:{live.api_port}"
        start_serve(live)
        try:
            serve.run(build_noop_app(), name="noop", route_prefix="/")
            noop = _single_load(f"{base_url}/api/check-fraud", bodies)
            serve.delete("noop")
            serve.run(build_app(live), name="fraud", route_prefix="/")
            app = _single_load(f"{base_url}/api/check-fraud", bodies)
            batches = [json.dumps({"transactions": records[i:i + BATCH_SIZE]}).encode()
                       for i in range(0, len(records) - BATCH_SIZE, BATCH_SIZE)]
            batch = run_load(f"{base_url}/api/check-fraud/batch", lambda i: batches[i % len(batches)],
                             requests=BATCH_REQUESTS, concurrency=BATCH_CONCURRENCY, max_seconds=120)
        finally:
            stop_serve(live)
    c1, c32 = "concurrency_1", "concurrency_32"
    return {
        "mode": "haproxy+throughput-optimized" if live.serve_haproxy else "default proxy",
        "model_version": trained["version"],
        "noop": noop, "app": app,
        "p50_ratio_c1": round(app[c1]["p50_ms"] / noop[c1]["p50_ms"], 2),
        "throughput_ratio_c32": round(app[c32]["rps"] / noop[c32]["rps"], 2),
        "batch": {**batch, "batch_size": BATCH_SIZE,
                  "transactions_per_s": round(batch["rps"] * BATCH_SIZE, 0) if batch["rps"] else None},
        "goals": {"p50_ratio_c1_max": 1.5, "throughput_ratio_c32_min": 0.6, "batch_tx_per_s_min": 20_000},
    }
