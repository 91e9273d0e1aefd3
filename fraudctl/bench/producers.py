"""The producers section of ``fraudctl bench``: the simulation actors' sustained rate into the embedded Kinesis."""

from __future__ import annotations

from typing import Any

import ray

from cluster.config import Settings
from cluster.runtime import aws_endpoint, ray_runtime
from simulation.producers import start_producers


def bench_producers(settings: Settings) -> dict[str, Any]:
    """Sustained rate of the producer actors into the embedded Kinesis, unpaced, for a fixed record count."""
    records_each, actors = 20_000, 2
    with aws_endpoint(settings.model_copy(update={"aws_mode": "embedded", "aws_endpoint_url": None})) as live:
        with ray_runtime(live):
            handles, runs = start_producers(live, tps=1e9, actors=actors, max_records_each=records_each)
            results = ray.get(runs)
            for handle in handles:
                ray.kill(handle)
    produced = sum(r["produced"] for r in results)
    elapsed = max(r["run_seconds"] for r in results)
    return {
        "actors": actors,
        "records": produced,
        "seconds": round(elapsed, 2),
        "sustained_tps": round(produced / elapsed, 1),
        "put_calls": sum(r["put_calls"] for r in results),
        "note": "includes simulating the traffic; target is the embedded moto Kinesis over HTTP",
    }
