"""The one loop shape every background service uses: run a pass, sleep, repeat; a failing pass never ends it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("opendeep.periodic")


async def run_periodically(one_pass: Callable[[], Awaitable[object]], interval: float, what: str) -> None:
    """Run `one_pass()` now and then every `interval` seconds until cancelled; an exception is logged (naming
    `what`) and the next pass runs as usual."""
    while True:
        try:
            await one_pass()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; trying again in %.1fs", what, interval)
        await asyncio.sleep(interval)
