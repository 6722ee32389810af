"""Live-call actions (DTMF, transfer, hangup) from whatever process holds the call.

A call's AudioSocket may land on any bridge worker, and the web UI's cancel may run in a process of its own; the
AMI controller that originated the call runs in the scheduler's process. Each process sends its own actions, over
an AMI connection to the Asterisk server carrying the call (calls.asterisk_server):

- the scheduler's own controller for that server, when this process runs it (`serve` with the `ami` part);
- else a connection of this process's own (AmiController with action_only: Events off, no re-sync, never an
  Originate), opened at the first action and kept for the next ones.

Why not a table of actions that the AMI process polls: a DTMF key the model presses would wait for the next poll
and a database round trip each way, and the table would need claims, results and clean-up to avoid an action
done twice or lost. Here an action is written once, by the process that asked, and its error (Asterisk down,
refused) comes back to that process at once. Asterisk takes many AMI sessions; one more per worker costs little.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ami_controller.manager import AmiController, AmiError, AmiNotConnected
from db.models import Call, CallStatus
from opendeep.settings import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5.0   # a first action waits this long for its own AMI login


class CallActions:
    """What `runtime.ami` is in every process: `play_dtmf`, `transfer` and `hangup` on a live call's channel,
    sent to the AMI of the server that carries the call. Raises AmiError (AmiNotConnected: nothing was sent)."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.controllers: dict[str, AmiController] = {}   # the scheduler's, where this process runs it
        self._own: dict[str, AmiController] = {}          # this process's action-only connections
        self._opening: dict[str, asyncio.Lock] = {}

    def attach(self, controller: AmiController) -> None:
        """The `ami` part registers each server's controller: actions for its calls go through it."""
        self.controllers[controller.server.name] = controller

    def detach(self, controller: AmiController) -> None:
        if self.controllers.get(controller.server.name) is controller:
            del self.controllers[controller.server.name]

    # What the web UI shows (webui/views.asterisk_state): whether calls can be placed from here.

    @property
    def connected(self) -> bool | None:
        """True when a scheduler controller of this process is logged in; None where none runs here."""
        if not self.controllers:
            return None
        return any(controller.connected for controller in self.controllers.values())

    @property
    def address(self) -> str:
        return ", ".join(controller.address for controller in self.controllers.values())

    # The actions.

    async def play_dtmf(self, channel: str, digits: str) -> None:
        await (await self._for_channel(channel)).play_dtmf(channel, digits)

    async def transfer(self, channel: str) -> None:
        await (await self._for_channel(channel)).transfer(channel)

    async def hangup(self, channel: str, cause: int = 16) -> None:
        await (await self._for_channel(channel)).hangup(channel, cause)

    async def close(self) -> None:
        """Close this process's own action connections (serve does it on the way out)."""
        for controller in self._own.values():
            await controller.stop()
        self._own.clear()

    async def _for_channel(self, channel: str) -> AmiController:
        async with self.sessions() as db:
            # tenant-safe: internal routing, not a tenant query: the caller already checked the call is the user's.
            servers = set((await db.scalars(select(Call.asterisk_server).where(
                Call.channel == channel, Call.status != CallStatus.ENDED))).all())
        if len(servers) > 1:
            # Two live calls on different servers with the same channel name: refuse rather than guess.
            raise AmiError(f"channel {channel} is live on several Asterisk servers ({', '.join(map(str, servers))}); "
                           f"not sending an action that could reach the wrong call")
        server = self.settings.asterisk_server(servers.pop() if servers else None)
        if server is None:
            raise AmiError(f"channel {channel} is on an Asterisk server that is no longer in ASTERISK_SERVERS")
        controller = self.controllers.get(server.name)
        if controller is not None:
            return controller
        return await self._own_connection(server)

    async def _own_connection(self, server) -> AmiController:
        lock = self._opening.setdefault(server.name, asyncio.Lock())
        async with lock:
            controller = self._own.get(server.name)
            if controller is None:
                controller = AmiController(self.settings, self.sessions, None, server=server, action_only=True)
                await controller.start()
                self._own[server.name] = controller
        try:
            await controller.wait_connected(CONNECT_TIMEOUT_SECONDS)
        except TimeoutError:
            raise AmiNotConnected(f"not connected to Asterisk AMI at {controller.address} (server {server.name!r}) "
                                  f"from this process within {CONNECT_TIMEOUT_SECONDS:g} s; nothing was sent") from None
        return controller
