"""An event loop whose clock is virtual: when nothing is ready to run, time jumps to the next timer at once.

For timing logic that uses only the loop's clock and timers (the outbound pacer's 20 ms grid): a test then sees
the exact times the code asked for, whatever the machine's load, and 10 s of calls take milliseconds. Nothing
here may wait on real I/O: a selector wait would block for real while virtual time stands still.

    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
"""

from __future__ import annotations

import asyncio
from typing import Any


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0

    def time(self) -> float:
        return self._virtual_now

    def stall(self, seconds: float) -> None:
        """The loop was blocked this long (a slow callback): time moves on, no timer ran meanwhile."""
        self._virtual_now += seconds

    def _run_once(self) -> None:
        ready: Any = self._ready              # asyncio's own queues (CPython's BaseEventLoop)
        scheduled: Any = self._scheduled
        if not ready:
            due = min((handle.when() for handle in scheduled if not handle.cancelled()), default=None)
            if due is not None:
                self._virtual_now = max(self._virtual_now, due)
        super()._run_once()
