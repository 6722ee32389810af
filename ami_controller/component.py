"""The `ami` component of `opendeep serve`: one AMI connection per Asterisk server (ASTERISK_SERVERS, or the one
from AMI_*), each fed by the scheduler / initiator loop.

Several `serve` processes may run this part over one PostgreSQL: the tasks' SKIP LOCKED claims decide which
process dials which task, and each server's call limit is counted from the calls table before each claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from ami_controller.actions import CallActions
from ami_controller.initiator import DispatchReport, dispatch_due_tasks
from ami_controller.manager import AmiController
from opendeep.health import task_running
from opendeep.periodic import PassCount, run_periodically
from opendeep.runtime import Runtime

log = logging.getLogger(__name__)


class AmiComponent:
    """Starts an AmiController per Asterisk server (registered with `runtime.ami`, the process's CallActions) and
    runs a scheduler pass for each every SCHEDULER_POLL_SECONDS."""

    name = "ami"

    def __init__(self, runtime: Runtime, *, controller: AmiController | None = None) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.controllers = [controller] if controller is not None else [
            AmiController(settings, runtime.sessions, runtime.events, server=server)
            for server in settings.asterisk_servers]
        self.controller = self.controllers[0]
        # Who claimed a task, in the tasks table: enough to tell scheduler processes apart.
        self.claimer = f"{socket.gethostname()}:{os.getpid()}"[:64]
        self._loop_task: asyncio.Task | None = None
        self._made_actions = False
        self.passes = PassCount()   # finished scheduler passes, failed ones too (shown by /healthz)

    async def start(self) -> None:
        for controller in self.controllers:
            await controller.start()
        if not isinstance(self.runtime.ami, CallActions):   # `serve` makes it; tests may start us alone
            self.runtime.ami = CallActions(self.runtime.settings, self.runtime.sessions)
            self._made_actions = True
        for controller in self.controllers:
            self.runtime.ami.attach(controller)
        poll = max(self.runtime.settings.scheduler_poll_seconds, 0.05)
        self._loop_task = asyncio.create_task(
            run_periodically(self._scheduler_pass, poll, "scheduler pass", self.passes), name="scheduler")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        actions = self.runtime.ami
        for controller in self.controllers:
            if isinstance(actions, CallActions):
                actions.detach(controller)
            await controller.stop()
        if self._made_actions and isinstance(actions, CallActions):
            await actions.close()
            self.runtime.ami = None

    def health(self) -> dict:
        """Healthy when logged in to every Asterisk (and re-synced) and the scheduler loop runs."""
        connected, scheduler = all(c.connected for c in self.controllers), task_running(self._loop_task)
        health = {"ok": connected and scheduler, "asterisk": self.controller.address, "connected": connected,
                  "scheduler": scheduler, "scheduler_passes": self.passes.finished}
        if len(self.controllers) > 1:
            health["servers"] = {c.server.name: {"asterisk": c.address, "connected": c.connected}
                                 for c in self.controllers}
        return health

    async def run_once(self) -> DispatchReport:
        """One scheduler pass per server, in the configured order; the reports are added up."""
        total = DispatchReport()
        for controller in self.controllers:
            report = await dispatch_due_tasks(self.runtime.sessions, self.runtime.settings, controller,
                                              claimer=self.claimer, events=self.runtime.events)
            total.claimed += report.claimed
            for name in ("dialed", "cancelled_dnd", "rescheduled", "deferred", "failed"):
                getattr(total, name).extend(getattr(report, name))
        return total

    async def _scheduler_pass(self) -> None:
        report = await self.run_once()
        if report.claimed:
            log.info("scheduler pass: %d claimed, %d dialed, %d DND, %d outside window, %d deferred",
                     report.claimed, len(report.dialed), len(report.cancelled_dnd), len(report.rescheduled),
                     len(report.deferred))
