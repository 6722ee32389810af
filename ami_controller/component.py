"""The `ami` component of `opendeep serve`: the AMI connection plus the scheduler / initiator loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from ami_controller.initiator import DispatchReport, dispatch_due_tasks
from ami_controller.manager import AmiController
from opendeep.health import task_running
from opendeep.periodic import finishing, log_pass_failure
from opendeep.runtime import Runtime

log = logging.getLogger("opendeep.ami.component")


class AmiComponent:
    """Starts the AmiController (sets `runtime.ami`) and runs a scheduler pass every SCHEDULER_POLL_SECONDS."""

    name = "ami"

    def __init__(self, runtime: Runtime, *, controller: AmiController | None = None) -> None:
        self.runtime = runtime
        self.controller = controller or AmiController(runtime.settings, runtime.sessions, runtime.events)
        # Who claimed a task, in the tasks table: enough to tell scheduler processes apart.
        self.claimer = f"{socket.gethostname()}:{os.getpid()}"[:64]
        self._loop_task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        await self.controller.start()
        self.runtime.ami = self.controller
        self._loop_task = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await self.controller.stop()
        if self.runtime.ami is self.controller:
            self.runtime.ami = None

    def health(self) -> dict:
        """Healthy when logged in to Asterisk (and re-synced) and the scheduler loop runs."""
        connected, scheduler = self.controller.connected, task_running(self._loop_task)
        return {"ok": connected and scheduler, "asterisk": self.controller.address, "connected": connected,
                "scheduler": scheduler}

    def wake(self) -> None:
        """Run the next pass now instead of at the next poll (e.g. a campaign was just started)."""
        self._wake.set()

    async def run_once(self) -> DispatchReport:
        return await dispatch_due_tasks(self.runtime.sessions, self.runtime.settings, self.controller,
                                        claimer=self.claimer, events=self.runtime.events)

    async def _run(self) -> None:
        poll = max(self.runtime.settings.scheduler_poll_seconds, 0.05)
        while True:
            try:
                report = await finishing(self.run_once())   # stopping never cuts a claim in half
                if report.claimed:
                    log.info("scheduler pass: %d claimed, %d dialed, %d DND, %d outside window, %d deferred",
                             report.claimed, len(report.dialed), len(report.cancelled_dnd),
                             len(report.rescheduled), len(report.deferred))
            except Exception as exc:  # a database hiccup must not stop the campaign for good
                log_pass_failure(log, "scheduler pass", exc, poll)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)
