"""The ingress' group commit: a lone call runs at once, calls that queue behind a pass share the next one."""

from __future__ import annotations

import asyncio

import pytest

from serve.coalesce import Coalescer


def test_calls_queued_behind_a_pass_share_the_next_pass() -> None:
    passes: list[list[int]] = []
    release = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        passes.append(items)
        if len(passes) == 1:
            await release.wait()  # the first pass is busy while the others queue
        return [item * 10 for item in items]

    async def scenario() -> list[int]:
        coalescer = Coalescer(run, max_size=100)
        first = asyncio.ensure_future(coalescer(1))
        await asyncio.sleep(0)
        queued = [asyncio.ensure_future(coalescer(item)) for item in range(2, 7)]
        await asyncio.sleep(0)
        release.set()
        return await asyncio.gather(first, *queued)

    assert asyncio.run(scenario()) == [10, 20, 30, 40, 50, 60]
    assert passes == [[1], [2, 3, 4, 5, 6]]  # the lone first call did not wait for company


def test_a_pass_stays_within_max_size_and_errors_reach_every_caller_of_their_pass() -> None:
    passes: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        passes.append(items)
        await asyncio.sleep(0.01)
        if 3 in items:
            raise ValueError("bad batch")
        return items

    async def scenario() -> list[object]:
        coalescer = Coalescer(run, max_size=2, size=lambda item: 1, concurrency=1)
        calls = [asyncio.ensure_future(coalescer(item)) for item in range(1, 6)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(scenario())
    assert all(len(items) <= 2 for items in passes) and sorted(sum(passes, [])) == [1, 2, 3, 4, 5]
    failed = [item for item, result in zip(range(1, 6), results) if isinstance(result, ValueError)]
    assert 3 in failed and all(item in next(p for p in passes if 3 in p) for item in failed)
    assert [r for r in results if not isinstance(r, Exception)] == [i for i in range(1, 6) if i not in failed]


@pytest.mark.parametrize("concurrency", [1, 2])
def test_no_more_passes_run_at_once_than_allowed(concurrency: int) -> None:
    running, peak = 0, 0

    async def run(items: list[int]) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.005)
        running -= 1
        return items

    async def scenario() -> None:
        coalescer = Coalescer(run, max_size=1, concurrency=concurrency)
        await asyncio.gather(*(coalescer(item) for item in range(10)))

    asyncio.run(scenario())
    assert peak == concurrency
