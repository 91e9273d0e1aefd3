"""The ingest log section of ``fraudctl bench``: what appending HTTP-scored transactions to the ingest stream
costs a request, and how fast a recovery reads the log back.

The ingress puts a pass's transactions (one request, or the several a loaded replica coalesces) while the
feature-state call runs, so a request waits for the longer of the two: the put's latency at the sizes a pass has is
the figure to hold against the state call's. On the embedded Kinesis (moto's server), no Ray.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np
from tqdm import tqdm

from cluster.aws import client
from cluster.config import Settings
from cluster.kinesis import decode_transaction, lines_since, put_transactions
from cluster.runtime import aws_endpoint
from cluster.schema import TIMESTAMP_FORMAT, Transaction, scoring_record
from fraudctl.bench.features import synthetic_transactions

PASS_SIZES = (1, 32, 1_000)  # a lone request, a coalesced pass under load, a full batch request


def bench_ingest_log(settings: Settings, *, puts: int = 300, shards: int = 2) -> dict[str, Any]:
    frame = synthetic_transactions(max(PASS_SIZES) * 4, users=1_000, merchants=100).drop(columns=["is_fraud"])
    frame["timestamp"] = frame["timestamp"].dt.strftime(TIMESTAMP_FORMAT)  # as a request body has it
    records = [scoring_record(Transaction.model_validate(row)) for row in frame.to_dict(orient="records")]
    figures: dict[str, Any] = {"puts_per_size": puts, "shards": shards}
    with aws_endpoint(settings.model_copy(update={"aws_mode": "embedded", "aws_endpoint_url": None})) as live:
        kinesis = client("kinesis", live)
        stream = f"bench-ingest-{uuid.uuid4().hex[:8]}"
        kinesis.create_stream(StreamName=stream, ShardCount=shards)
        kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        started_at = datetime.now(timezone.utc)
        put_transactions(kinesis, stream, records[:1])  # connection up
        written = 1
        for size in PASS_SIZES:
            rounds = max(puts * min(PASS_SIZES) // size, 20)
            latencies = []
            for index in tqdm(range(rounds), desc=f"ingest puts of {size}", unit="put"):
                start = index * size % (len(records) - size + 1)
                began = time.perf_counter()
                put_transactions(kinesis, stream, records[start:start + size])
                latencies.append((time.perf_counter() - began) * 1000.0)
                written += size
            figures[f"put_{size}_ms"] = {"p50": round(float(np.percentile(latencies, 50)), 2),
                                         "p99": round(float(np.percentile(latencies, 99)), 2), "puts": rounds}
        began = time.perf_counter()
        replayed = sum(decode_transaction(line) is not None for _, line in lines_since(kinesis, stream, started_at))
        seconds = time.perf_counter() - began
        figures["replay"] = {"transactions": replayed, "written": written, "seconds": round(seconds, 2),
                             "per_s": round(replayed / seconds)}
        kinesis.delete_stream(StreamName=stream)
    medians = ", ".join(f"{size}: {figures[f'put_{size}_ms']['p50']} ms" for size in PASS_SIZES)
    print(f"ingest log: put p50 by transactions per put {medians}; replay read {figures['replay']['per_s']}/s")
    return figures
