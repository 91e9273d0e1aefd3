"""A bounded closed-loop HTTP load generator for loopback benchmarks and autoscaling tests.

``concurrency`` workers each send one request at a time until ``requests`` were sent or ``max_seconds`` passed;
the figures are latency percentiles (ms) and completed requests per second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from serve.stats import percentile_summary


async def _drive(
    url: str,
    bodies: Callable[[int], bytes],
    *,
    requests: int,
    concurrency: int,
    max_seconds: float,
    headers: dict[str, str],
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    deadline = time.perf_counter() + max_seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers={"content-type": "application/json", **headers}) as s:

        async def worker() -> None:
            nonlocal errors
            for index in counter:
                if time.perf_counter() > deadline:
                    return
                sent = time.perf_counter()
                async with s.post(url, data=bodies(index)) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - sent)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        **latency_figures([seconds * 1000.0 for seconds in latencies]),
        "errors": errors,
        "concurrency": concurrency,
        "rps": round(len(latencies) / elapsed, 1) if elapsed else None,
    }


def latency_figures(latencies_ms: list[float]) -> dict[str, Any]:
    """How many were timed, and their p50 and p99 in ms."""
    summary = percentile_summary(latencies_ms)
    return {"requests": len(latencies_ms), "p50_ms": summary["p50"], "p99_ms": summary["p99"]}


def run_load(
    url: str,
    bodies: Callable[[int], bytes],
    *,
    requests: int,
    concurrency: int = 1,
    max_seconds: float = 30.0,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Send the load and return its figures (blocking)."""
    return asyncio.run(
        _drive(url, bodies, requests=requests, concurrency=concurrency, max_seconds=max_seconds, headers=headers or {})
    )
