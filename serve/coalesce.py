"""Group commit for an async batch function: callers that arrive while a pass runs share the next pass.

``@serve.batch`` (Ray 2.60) forms a batch as soon as its first request arrives and only then waits for a free
``max_concurrent_batches`` slot: with ``batch_wait_timeout_s=0`` busy replicas queue single-request batches one
behind another (measured: 32 requests in flight, batches of 1), and any positive timeout makes a lone request wait
for company. Here a pass starts at once when a slot is free, and a pass that ends takes everything that queued
meanwhile, so a lone request never waits and a loaded replica runs large passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """``await coalescer(item)`` runs ``run(items) -> results`` (same order) over the items queued together, with
    at most ``concurrency`` passes at once and at most ``max_size`` (by ``size``) in one pass (a single larger item
    runs alone)."""

    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[list[Result]]],
        *,
        max_size: int,
        size: Callable[[Item], int] = lambda item: 1,
        concurrency: int = 1,
    ):
        self.run, self.max_size, self.size, self.concurrency = run, max_size, size, concurrency
        self._queue: list[tuple[Item, asyncio.Future]] = []
        self._passes = 0

    async def __call__(self, item: Item) -> Result:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._passes < self.concurrency:
            self._passes += 1
            asyncio.ensure_future(self._drain())
        return await future

    def _next(self) -> list[tuple[Item, asyncio.Future]]:
        taken, total = 0, 0
        while taken < len(self._queue):
            total += self.size(self._queue[taken][0])
            if taken and total > self.max_size:
                break
            taken += 1
        batch, self._queue = self._queue[:taken], self._queue[taken:]
        return [(item, future) for item, future in batch if not future.cancelled()]

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._next()
                if not batch:
                    continue
                try:
                    results = await self.run([item for item, _ in batch])
                except Exception as exc:  # every caller of the pass gets the error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._passes -= 1
