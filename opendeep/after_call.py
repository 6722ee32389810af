"""The "aftercall" component of `opendeep serve`: runs the post-call analyzer, the task lifecycle manager (and
its campaign-goal step), and the campaign summarizer as loops, and stops them cleanly.

Several processes may run it at once: every decision is a conditional UPDATE, so each call is analyzed once,
each stuck task recovered once and each campaign summarized once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from opendeep.analyzer import PostCallAnalyzer
from opendeep.health import task_running
from opendeep.lifecycle import LifecycleManager
from opendeep.periodic import run_periodically
from opendeep.runtime import Runtime
from opendeep.summarizer import CampaignSummarizer

log = logging.getLogger(__name__)

# Ended calls are picked up within this long; the summarizer needs no more haste than that.
MIN_POLL_SECONDS = 0.05


class AfterCallComponent:
    name = "aftercall"

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.analyzer = PostCallAnalyzer(settings, runtime.sessions, runtime.events)
        self.lifecycle = LifecycleManager(settings, runtime.sessions, runtime.events, hang_up=self._hang_up)
        self.summarizer = CampaignSummarizer(settings, runtime.sessions, runtime.events)
        self.poll_seconds = max(settings.scheduler_poll_seconds, MIN_POLL_SECONDS)
        self.lifecycle_seconds = max(settings.lifecycle_interval_seconds, MIN_POLL_SECONDS)
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Start the three loops. The lifecycle manager's first pass runs at once: that is crash recovery."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self.lifecycle.run_forever(self.lifecycle_seconds), name="aftercall-lifecycle"),
            asyncio.create_task(self.analyzer.run_forever(self.poll_seconds), name="aftercall-analyzer"),
            asyncio.create_task(self.summarizer.run_forever(self.poll_seconds), name="aftercall-summarizer"),
            # Until-one-succeeds campaigns: the next target's turn, or the rest cancelled, within a poll.
            asyncio.create_task(run_periodically(self.lifecycle.keep_goals, self.poll_seconds, "campaign goals"),
                                name="aftercall-goals"),
        ]
        log.info("after-call services started (poll %.1fs, lifecycle every %.1fs)", self.poll_seconds,
                 self.lifecycle_seconds)

    async def _hang_up(self, channel: str) -> None:
        if self.runtime.ami is None:
            raise RuntimeError("the AMI controller does not run in this process")
        await self.runtime.ami.hangup(channel)

    def health(self) -> dict:
        running = {task.get_name().removeprefix("aftercall-"): task_running(task) for task in self._tasks}
        return {"ok": bool(running) and all(running.values()), **running,
                "lifecycle_passes": self.lifecycle.passes.finished}

    async def stop(self) -> None:
        """Cancel the loops and wait for them; an analysis cut off mid-way is retried when its lease runs out."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.analyzer.close()
        await self.summarizer.close()
        await self.lifecycle.best_of.close()
