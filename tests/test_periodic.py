"""Stopping a background service lets the work in progress finish (its transaction commits or rolls back
normally) instead of cutting it off; work that takes longer than the grace is cut off after it."""

from __future__ import annotations

import asyncio

from opendeep.periodic import finishing, run_periodically


async def test_a_cancelled_loop_lets_its_pass_finish_first():
    steps: list[str] = []
    started = asyncio.Event()

    async def one_pass() -> None:
        steps.append("begin")
        started.set()
        await asyncio.sleep(0.05)   # e.g. a transaction's commit
        steps.append("end")

    loop = asyncio.create_task(run_periodically(one_pass, 10, "test pass"))
    await started.wait()
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    assert loop.cancelled() and steps == ["begin", "end"]


async def test_work_longer_than_the_grace_is_cut_off():
    finished = []

    async def slow() -> None:
        await asyncio.sleep(10)
        finished.append(True)

    waiter = asyncio.create_task(finishing(slow(), grace=0.05))
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled() and finished == []
