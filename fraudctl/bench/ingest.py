"""The ingest log section of ``fraudctl bench``: what appending HTTP-scored transactions to the ingest stream
costs a request, and how fast a recovery reads the log back.

The ingress puts a pass's transactions (one request, or the several a loaded replica coalesces) while the
feature-state call runs, so a request waits for the longer of the two. Measured per pass size, on the embedded
Kinesis (moto's server) and a local state actor, no models: the put alone, the state call alone, and both at once
as the ingress runs them, alternating round by round so a shared machine's load weighs on each alike; the added
latency is both minus the state call.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import numpy as np
from tqdm import tqdm

from cluster.aws import client
from cluster.config import Settings
from cluster.feature_state import OnlineFeatures
from cluster.kinesis import decode_transaction, lines_since, put_transactions
from cluster.runtime import aws_endpoint, ray_runtime
from cluster.schema import TIMESTAMP_FORMAT, Transaction, canonical_columns, scoring_record
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
        with ray_runtime(live), ThreadPoolExecutor(1) as putter:
            state = OnlineFeatures(live, name=f"bench-ingest-{uuid.uuid4().hex[:8]}", restore=False)
            put_transactions(kinesis, stream, records[:1])  # connections and actor up
            state.matrix(canonical_columns(records[:1]))
            written = 1

            def put(batch: list[dict[str, Any]]) -> None:
                put_transactions(kinesis, stream, batch)

            def call(batch: list[dict[str, Any]]) -> None:
                state.matrix(canonical_columns(batch), logged_in=stream)

            def both(batch: list[dict[str, Any]]) -> None:
                pending = putter.submit(put, batch)
                call(batch)
                pending.result()

            try:
                for size in PASS_SIZES:
                    rounds = max(puts * min(PASS_SIZES) // size, 20)
                    latencies: dict[str, list[float]] = {"put": [], "state": [], "both": []}
                    for index in tqdm(
                        range(rounds), desc=f"ingest put / state call / both, {size} per pass", unit="round"
                    ):
                        start = index * size % (len(records) - size + 1)
                        modes = [("put", put), ("state", call), ("both", both)]
                        for name, run in modes[index % 3 :] + modes[: index % 3]:
                            # ids of their own: a transaction the state has seen costs less than a new one
                            batch = [
                                {**record, "transaction_id": f"{record['transaction_id']}-{name}-{index}"}
                                for record in records[start : start + size]
                            ]
                            began = time.perf_counter()
                            run(batch)
                            latencies[name].append((time.perf_counter() - began) * 1000.0)
                        written += 2 * size
                    figures[f"pass_{size}_ms"] = {
                        name: {
                            "p50": round(float(np.percentile(values, 50)), 2),
                            "p99": round(float(np.percentile(values, 99)), 2),
                        }
                        for name, values in latencies.items()
                    }
                    figures[f"pass_{size}_ms"]["added_p50"] = round(
                        figures[f"pass_{size}_ms"]["both"]["p50"] - figures[f"pass_{size}_ms"]["state"]["p50"], 2
                    )
                    figures[f"pass_{size}_ms"]["rounds"] = rounds
            finally:
                state.shutdown()
        began = time.perf_counter()
        replayed = sum(decode_transaction(line) is not None for _, line in lines_since(kinesis, stream, started_at))
        seconds = time.perf_counter() - began
        figures["replay"] = {
            "transactions": replayed,
            "written": written,
            "seconds": round(seconds, 2),
            "per_s": round(replayed / seconds),
        }
        kinesis.delete_stream(StreamName=stream)
    added = ", ".join(f"{size}: {figures[f'pass_{size}_ms']['added_p50']} ms" for size in PASS_SIZES)
    print(
        f"ingest log: p50 added to a pass by transactions per pass {added}; replay read {figures['replay']['per_s']}/s"
    )
    return figures
