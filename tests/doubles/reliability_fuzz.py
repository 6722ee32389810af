"""Shared pieces of the fuzz tests: one hypothesis profile, and a way to run asyncio code from hypothesis.

Hypothesis drives plain functions, so each fuzz test opens one event loop (`asyncio.Runner`) for all its
examples and runs every example on it with a hard deadline: an input that makes a parser wait forever fails
the test as a hang instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

T = TypeVar("T")

# Bounded and deterministic: the same examples on every run, and the whole fuzz suite stays within seconds.
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# Socket-level fuzzing costs a connection (and a good session after it) per example, and its examples share
# one server: after a failure every later example may fail slowly too, so a failure is reported as found,
# without shrinking (which could run hundreds of such examples).
FUZZ_SOCKETS = settings(FUZZ, max_examples=100,
                        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target])

# One example may take at most this long; a parser fed a finished stream never needs to wait at all.
EXAMPLE_DEADLINE_SECONDS = 5.0


class Hang(AssertionError):
    """An example did not finish within its deadline: the code under test waited on a finished input."""


def run_bounded(runner: asyncio.Runner, work: Awaitable[T], timeout: float = EXAMPLE_DEADLINE_SECONDS) -> T:
    """Run `work` on the runner's loop; raise Hang if it takes longer than `timeout`."""
    async def bounded() -> T:
        try:
            return await asyncio.wait_for(work, timeout)
        except TimeoutError:
            raise Hang(f"no result within {timeout:g} s") from None
    return runner.run(bounded())


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` split at the given positions (modulo its length): how TCP may hand the same bytes over."""
    if not data:
        return []
    points = sorted({cut % len(data) for cut in cuts} - {0})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


cuts = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=8)
