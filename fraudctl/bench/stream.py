"""The stream section of ``fraudctl bench``: end-to-end figures through the embedded Kinesis."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from cluster.aws import client
from cluster.config import Settings
from cluster.kinesis import (
    MAX_PACKED_LINES,
    open_shard_starts,
    pack,
    put_frame,
    put_records_reliably,
    read_stream,
    to_entries,
)
from cluster.waiting import Pacer
from fraudctl.bench.cpu import cpu_by_role, cpu_figures
from fraudctl.bench.environment import trained_environment
from serve.stats import percentile_summary
from serve.stream import StreamScoring


def bench_stream(
    settings: Settings,
    *,
    warmup: int = 2_000,
    backlog: int = 25_000,
    hold_tps: float = 5_000,
    hold_seconds: float = 20,
    lag_tps: float = 2_000,
    lag_seconds: float = 30,
) -> dict[str, Any]:
    """End-to-end figures through the embedded Kinesis, in one run, after ``warmup`` records have brought the
    consumers up (models loaded, feature state live; how long that took is ``cold_start_s``):
    - sustained: a backlog of simulated records put at once, from the first put to the last decision (tx/s),
      beside the emulator's own put rate for the same records (the ceiling), and the CPU each part spent on it;
    - held: the population's traffic, replayed later in time under new ids, put at ``hold_tps`` for
      ``hold_seconds``: whether the consumers keep up (every record decided, lag bounded) at the goal rate;
    - lag: the same at ``lag_tps`` for ``lag_seconds``; stream lag = decision time - Kinesis arrival.

    Paced puts come from the driver, so the rate does not depend on the simulator's share of the CPU (the producer
    actors have their own section).
    """
    with trained_environment(settings) as (live, data, version):
        kinesis = client("kinesis", live)
        history = pd.read_parquet(data)
        history["timestamp"] = pd.to_datetime(history["timestamp"], utc=True)
        frame = history.iloc[warmup : warmup + backlog]
        scoring = StreamScoring(live, poll_shards_s=0.5).start()
        began = time.perf_counter()
        _put_all(kinesis, live.stream_name, history.head(warmup))
        _wait_scored(scoring, warmup, timeout_s=300)
        cold_start_s = time.perf_counter() - began

        with cpu_by_role() as cpu:
            began = time.perf_counter()
            put_seconds = _put_all(kinesis, live.stream_name, frame)
            _wait_scored(scoring, warmup + len(frame), timeout_s=300)
            drain_seconds = time.perf_counter() - began

        phases = {}
        copies = 0
        for tag, tps, seconds in (("hold", hold_tps, hold_seconds), ("lag", lag_tps, lag_seconds)):
            rows = int(tps * seconds)
            replay = _later(frame, rows, tag=tag, after=copies)
            copies += -(-rows // len(frame))
            expected = _scored(scoring)
            produced, put_for = _put_at_rate(kinesis, live.stream_name, replay, tps, seconds)
            try:
                caught_up: float | None = round(_wait_scored(scoring, expected + produced, timeout_s=60), 2)
            except TimeoutError:  # fell behind for good: the lag figures say by how much
                caught_up = None
            phases[tag] = {
                "target_tps": tps,
                "achieved_produce_tps": round(produced / put_for, 1),
                "produced": produced,
                "caught_up_s": caught_up,
            }
        scoring.stop()
        lags = _decision_lags(live)
    for tag, phase in phases.items():
        values = lags.get(tag, [])
        summary = percentile_summary(values, digits=1)
        phase.update(decisions=len(values), p50_ms=summary["p50"], p99_ms=summary["p99"])
    return {
        "model_version": version,
        "shards": live.stream_shards,
        "cold_start_s": round(cold_start_s, 2),
        "sustained": {
            "transactions": len(frame),
            "seconds": round(drain_seconds, 2),
            "end_to_end_tps": round(len(frame) / drain_seconds, 1),
            "emulator_put_tps": round(len(frame) / put_seconds, 1),
            "goal_tps": 5_000,
            "packing": f"up to {MAX_PACKED_LINES} transactions per Kinesis record",
            **cpu_figures(cpu, len(frame)),
        },
        "held_at_goal": phases["hold"],
        "lag_at_target": {**phases["lag"], "goal_p99_ms": 1_000},
    }


def _put_all(kinesis: Any, stream: str, frame: Any) -> float:
    """Put ``frame`` packed, as fast as the emulator takes it; returns the seconds it took."""
    began = time.perf_counter()
    put_frame(kinesis, stream, frame)
    return time.perf_counter() - began


def _scored(scoring: StreamScoring) -> int:
    return sum(shard.get("scored", 0) for shard in scoring.status()["shards"].values())


def _wait_scored(scoring: StreamScoring, count: int, *, timeout_s: float) -> float:
    """Wait until the consumers have scored ``count`` records in all; returns the seconds waited."""
    began = time.perf_counter()
    while _scored(scoring) < count:
        if time.perf_counter() - began > timeout_s:
            raise TimeoutError(f"consumers did not score {count} records within {timeout_s} s")
        time.sleep(0.1)
    return time.perf_counter() - began


def _later(frame: Any, rows: int, *, tag: str, after: int = 0) -> Any:
    """``rows`` transactions: copies of ``frame`` shifted past its own time span (and past ``after`` earlier
    copies), under new ids ending ``-{tag}{k}``."""
    span = (frame["timestamp"].max() - frame["timestamp"].min()).ceil("D") + pd.Timedelta(days=1)
    copies = [
        frame.assign(
            timestamp=frame["timestamp"] + span * (after + k), transaction_id=frame["transaction_id"] + f"-{tag}{k}"
        )
        for k in range(1, -(-rows // len(frame)) + 1)
    ]
    return pd.concat(copies, ignore_index=True).head(rows)


def _put_at_rate(kinesis: Any, stream: str, frame: Any, tps: float, seconds: float) -> tuple[int, float]:
    """Put ``frame`` at ``tps`` (packed, ten puts a second) for at most ``seconds``; returns (rows put, seconds)."""
    entries, starts = to_entries(frame), open_shard_starts(kinesis, stream)
    step = max(1, round(tps / 10))
    sent, began, pacer = 0, time.perf_counter(), Pacer(tps, max_lag_s=float("inf"))
    while sent < len(entries) and time.perf_counter() - began < seconds:
        put = entries[sent : sent + step]
        put_records_reliably(kinesis, stream, pack(put, starts))
        sent += len(put)
        pacer.pace(len(put))
    return sent, time.perf_counter() - began


def _decision_lags(settings: Settings) -> dict[str, list[float]]:
    """Stream lag of every replayed decision by its phase tag (ids end ``-{tag}{k}``), read back from the output."""
    lags: dict[str, list[float]] = {}
    for decision in read_stream(settings, settings.decisions_stream_name):
        tag = decision["transaction_id"].rpartition("-")[2].rstrip("0123456789")
        lags.setdefault(tag, []).append(decision["stream_lag_ms"])
    return lags
