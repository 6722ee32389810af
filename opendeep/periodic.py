"""The one loop shape every background service uses: run a pass, sleep, repeat; a failing pass never ends it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from opendeep.dberrors import unreachable_reason

log = logging.getLogger(__name__)
T = TypeVar("T")
FINISH_GRACE_SECONDS = 5.0


async def finishing(work: Awaitable[T], grace: float = FINISH_GRACE_SECONDS) -> T:
    """Await `work`; if we are cancelled meanwhile (the service is stopping), let `work` finish first (at most
    `grace` seconds), then stop. Work cut off mid-transaction would leave a connection whose rollback is
    cancelled too, which SQLAlchemy's pool reports as an error with a traceback."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, grace)
        raise


class PassCount:
    """How many passes a loop has finished (failed ones too): /healthz shows it, and a test that checks that
    nothing happened waits for passes to have run rather than for a guessed time."""

    def __init__(self) -> None:
        self.finished = 0


async def run_periodically(one_pass: Callable[[], Awaitable[object]], interval: float, what: str,
                           passes: PassCount | None = None) -> None:
    """Run `one_pass()` now and then every `interval` seconds until cancelled; an exception is logged (naming
    `what`) and the next pass runs as usual."""
    while True:
        try:
            await finishing(one_pass())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log_pass_failure(log, what, exc, interval)
        if passes is not None:
            passes.finished += 1
        await asyncio.sleep(interval)


def log_pass_failure(logger: logging.Logger, what: str, exc: BaseException, interval: float) -> None:
    """A failed pass: one warning line when the database cannot be reached (the next pass retries; a
    traceback per pass would bury the cause), the traceback for anything else."""
    reason = unreachable_reason(exc)
    if reason is not None:
        logger.warning("%s: cannot use the database (%s); trying again in %.1f s", what, reason, interval)
    else:
        logger.error("%s failed; trying again in %.1f s", what, interval, exc_info=exc)
