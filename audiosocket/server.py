"""The AudioSocket TCP server: the dialplan's `Dial(AudioSocket/${OPENDEEP_AS_ADDR}/${OPENDEEP_AS_UUID}/c(slin))`
(Asterisk's AudioSocket channel driver) connects here.

The first frame must be the UUID that FastAGI call-start put in calls.audiosocket_uuid; it says which call (and
so which tenant) this socket is, and its first connection claims it. An unknown or already claimed UUID, a call
that already ended, or a peer outside ASTERISK_ALLOWED_PEERS is refused: logged, answered with a hangup frame,
closed. A known call gets a CallBridge for as long as the socket lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

import openai
from sqlalchemy import select, update

from audiosocket.bridge import BridgeLimits, CallBridge, ConnectModel, EndReason
from audiosocket.instructions import build_instructions, user_display_name, voicemail_plan_line
from audiosocket.protocol import DEFAULT_MAX_PAYLOAD, HANGUP_FRAME, Frame, FrameReader, Kind, ProtocolError
from audiosocket.realtime import ModelConnectionLost, RealtimeSession
from audiosocket.recorder import CallRef, RecordWriter
from audiosocket.special_calls import call_instructions, voicemail_plan
from audiosocket.tools import tool_definitions
from audiosocket.wrap_up import watch_for_wrap_up
from db import repo, transfers
from db.models import Call, CallDirection, CallOutcome, CallStatus
from db.typed import rows_changed
from db.types import utcnow
from opendeep.llm import LlmNotConfigured, realtime_client
from opendeep.metrics import AUDIOSOCKET_LIVE_CALLS
from opendeep.runtime import Runtime
from opendeep.settings import peer_allowed

log = logging.getLogger(__name__)

UUID_TIMEOUT_SECONDS = 5.0   # Asterisk sends the UUID at once (1 ms in audiosocket-session.txt)
STOP_TIMEOUT_SECONDS = 5.0
RECORDS_STOP_TIMEOUT_SECONDS = 10.0   # stopping: how long the calls' last records may take to be written
_EOF = object()


class AsteriskConnection(asyncio.Protocol):
    """One AudioSocket connection from Asterisk, on the event loop's socket callbacks (no task per frame).

    Until the first frame it checks the peer and waits for the UUID (UUID_TIMEOUT_SECONDS); while the call is
    claimed in the database it keeps what arrives; once the call's bridge `attach`es, everything goes to it.
    """

    transport: asyncio.Transport   # set in connection_made, which asyncio calls before any other callback

    def __init__(self, server: AudioSocketServer) -> None:
        self.server = server
        self.peer: Any = None
        self.frames = FrameReader(server.max_payload)
        self.bridge: CallBridge | None = None
        self._claiming = False
        self._pending: list[Any] = []   # bytes, _EOF or the exception of connection_lost, while claiming
        self._uuid_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's protocol always gets a read/write transport (asyncio's or uvloop's, which does not
        # subclass asyncio.Transport, hence no isinstance check).
        self.transport = cast(asyncio.Transport, transport)
        self.peer = peer = transport.get_extra_info("peername")
        server = self.server
        host = peer[0] if isinstance(peer, tuple) and peer else None
        if not peer_allowed(server.runtime.settings, host):
            log.warning("AudioSocket connection from %s refused: the address is not in ASTERISK_ALLOWED_PEERS", peer)
            server.refused += 1
            transport.close()
            return
        server.connections.add(self)
        self._uuid_timer = asyncio.get_running_loop().call_later(server.uuid_timeout, self._no_uuid)

    def data_received(self, data: bytes) -> None:
        bridge = self.bridge
        if bridge is not None:
            bridge.caller_data(data)
        elif self._claiming:
            self._pending.append(data)
        elif not self.transport.is_closing():
            self._before_uuid(data)

    def eof_received(self) -> bool | None:
        bridge = self.bridge
        if bridge is not None:
            bridge.caller_eof()
        elif self._claiming:
            self._pending.append(_EOF)
        else:
            try:
                self.frames.finish()
                log.info("AudioSocket from %s closed before sending its UUID", self.peer)
            except ProtocolError as exc:
                log.warning("AudioSocket from %s: %s; closing", self.peer, exc)
        return None   # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self._uuid_timer is not None:
            self._uuid_timer.cancel()
        bridge = self.bridge
        if bridge is not None:
            bridge.caller_lost(exc)
        elif self._claiming:
            self._pending.append(exc if exc is not None else ConnectionResetError("closed"))

    def attach(self, bridge: CallBridge) -> None:
        """From now on the call's bridge gets every byte, the EOF and the loss of the socket; what arrived while
        the call was claimed first, in order."""
        self.bridge = bridge
        pending, self._pending = self._pending, []
        for item in pending:
            if isinstance(item, bytes):
                bridge.caller_data(item)
            elif item is _EOF:
                bridge.caller_eof()
            else:
                bridge.caller_lost(item)

    def refuse(self) -> None:
        """Answer with a hangup frame and close (an unknown UUID, a first frame that is not the UUID)."""
        self.server.refused += 1
        with contextlib.suppress(Exception):
            self.transport.write(HANGUP_FRAME)
        self.transport.close()

    def _before_uuid(self, data: bytes) -> None:
        try:
            got = self.frames.feed(data)
        except ProtocolError as exc:
            log.warning("AudioSocket from %s: %s; closing", self.peer, exc)
            self.transport.close()
            return
        if not got:
            return
        if self._uuid_timer is not None:
            self._uuid_timer.cancel()
        first, rest = got[0], got[1:]
        if first.kind is not Kind.UUID:
            log.warning("AudioSocket from %s began with a 0x%02x frame, not the UUID; refused", self.peer,
                        first.kind)
            self.refuse()
            return
        self._claiming = True
        self.server.start_call(self, first.uuid(), rest)

    def _no_uuid(self) -> None:
        if not self._claiming and self.bridge is None:
            log.warning("AudioSocket from %s sent no UUID frame within %g s; closing", self.peer,
                        self.server.uuid_timeout)
            self.transport.close()


class AudioSocketServer:
    """Listens for Asterisk's AudioSocket connections and runs one CallBridge per call."""

    def __init__(self, runtime: Runtime, *, host: str | None = None, port: int | None = None,
                 connect_model: ConnectModel | None = None, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 uuid_timeout: float = UUID_TIMEOUT_SECONDS) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.host = host if host is not None else settings.audiosocket_bind.host
        self.port = port if port is not None else settings.audiosocket_bind.port
        self.max_payload = max_payload
        self.uuid_timeout = uuid_timeout
        self.connect_model = connect_model or self._connect_realtime
        self.bridges: set[CallBridge] = set()
        self.connections: set[AsteriskConnection] = set()
        self.records = RecordWriter(runtime.sessions, runtime.events)   # every call's transcripts and events
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._client: openai.AsyncOpenAI | None = None

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0). With AUDIOSOCKET_REUSE_PORT several processes
        listen on the same address and the kernel spreads the connections over them."""
        loop = asyncio.get_running_loop()
        reuse_port = self.runtime.settings.audiosocket_reuse_port or None
        try:
            self._server = await loop.create_server(lambda: AsteriskConnection(self), self.host, self.port,
                                                    reuse_port=reuse_port)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen for AudioSocket on {self.host}:{self.port}: "
                                     f"{exc.strerror} (check AUDIOSOCKET_BIND; AUDIOSOCKET_REUSE_PORT=true in "
                                     f"every process lets several share it)") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("AudioSocket listening on %s:%s%s", self.host, self.port, " (shared port)" if reuse_port else "")
        if self.connect_model == self._connect_realtime:
            # Now, not on the first call: building the client (its TLS context) blocks the event loop for
            # 40-200 ms, which would be a gap in the audio of every call in progress.
            with contextlib.suppress(LlmNotConfigured):
                self._client = realtime_client(self.runtime.settings)
        return self.port

    async def stop(self) -> None:
        """Stop listening, end every live call (goodbye, hangup frame), close the model client."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if connection.bridge is None and not connection._claiming:
                connection.transport.close()   # still waiting for its UUID
        for bridge in list(self.bridges):
            bridge.request_end(EndReason.SHUTDOWN, "OpenDeep is stopping")
        if self._handlers:
            _, pending = await asyncio.wait(set(self._handlers), timeout=STOP_TIMEOUT_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.records.close(RECORDS_STOP_TIMEOUT_SECONDS)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    # ------------------------------------------------------------------ one call

    def start_call(self, connection: AsteriskConnection, as_uuid: str, rest: list[Frame]) -> None:
        """The UUID frame arrived: claim the call and bridge it, as a task of its own."""
        task = asyncio.create_task(self._run_call(connection, as_uuid, rest), name=f"audiosocket-{as_uuid}")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _run_call(self, connection: AsteriskConnection, as_uuid: str, rest: list[Frame]) -> None:
        peer = connection.peer
        try:
            found = await self._load_call(as_uuid)
            if found is None:
                log.warning("AudioSocket refused: UUID %s from %s matches no live call, or its call is already "
                            "connected (a UUID is good for one connection)", as_uuid, peer)
                connection.refuse()
                return
            ref, instructions, user_name, tools = found
            settings = self.runtime.settings
            bridge = CallBridge(self.runtime, ref, connection, instructions=instructions,
                                connect_model=self.connect_model, frame_reader=connection.frames,
                                initial_frames=rest,
                                limits=BridgeLimits(settings.max_call_seconds, settings.silence_timeout_seconds),
                                records=self.records, user_name=user_name, tools=tools,
                                frames_per_append=settings.audiosocket_frames_per_append)
            log.info("AudioSocket %s from %s: call %s (user %s)", as_uuid, peer, ref.call_id, ref.user_id)
            self.bridges.add(bridge)
            AUDIOSOCKET_LIVE_CALLS.inc()
            # Until-one-succeeds campaigns: a call is wrapped up politely once another call met the goal.
            watcher = asyncio.create_task(watch_for_wrap_up(self.runtime, bridge), name=f"call-{ref.call_id}-wrap-up")
            try:
                await bridge.run()
            finally:
                self.bridges.discard(bridge)
                AUDIOSOCKET_LIVE_CALLS.dec()
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher
        except Exception:
            log.exception("AudioSocket connection from %s failed", peer)
        finally:
            connection.transport.close()

    async def _load_call(self, as_uuid: str) -> tuple[CallRef, str, str, list[dict[str, Any]]] | None:
        """Claim the live call with this AudioSocket UUID; its instructions and tools. The UUID is the only key
        Asterisk gives us, so this one lookup is not tenant-scoped; everything after it is (CallRef.user_id).
        The first connection claims it (one conditional UPDATE); any later one with the same UUID gets None."""
        async with self.runtime.sessions() as db, db.begin():
            # tenant-safe: the AudioSocket UUID is the only key Asterisk gives (see above)
            claimed = await db.execute(
                update(Call).where(Call.audiosocket_uuid == as_uuid, Call.audiosocket_claimed_at.is_(None),
                                   Call.status != CallStatus.ENDED).values(audiosocket_claimed_at=utcnow()))
            if rows_changed(claimed) != 1:
                return None
            # tenant-safe: the call just claimed by its UUID; everything after uses its user_id
            call = await db.scalar(select(Call).where(Call.audiosocket_uuid == as_uuid))
            if call is None:
                return None
            task = await repo.get_task(db, call.user_id, call.task_id)
            user = await repo.get_user(db, call.user_id)
            if task is None or user is None:
                return None
            campaign = await repo.get_campaign(db, call.user_id, task.campaign_id)
            if call.direction is CallDirection.INBOUND or call.outcome is CallOutcome.VOICEMAIL:
                instructions, tools = call_instructions(self.runtime.settings, call, task, user, campaign)
            else:
                targets = [t.name for t in await transfers.list_transfer_targets(db, call.user_id)]
                instructions = build_instructions(
                    task=task, user=user, campaign=campaign, transfer_targets=targets,
                    recorded=self.runtime.settings.record_calls,
                    voicemail=voicemail_plan_line(*voicemail_plan(self.runtime.settings, task, campaign)))
                tools = tool_definitions(targets)
            return (CallRef(call.user_id, call.id, task.id), instructions, user_display_name(user), tools)

    async def _connect_realtime(self, instructions: str, tools: list[dict[str, Any]]) -> RealtimeSession:
        if self._client is None:
            try:
                self._client = realtime_client(self.runtime.settings)
            except LlmNotConfigured as exc:
                raise ModelConnectionLost(str(exc)) from exc
        return await RealtimeSession.connect(self._client, self.runtime.settings, instructions=instructions,
                                             tools=tools)


class AudioSocketComponent:
    """`opendeep serve` component: the AudioSocket server on AUDIOSOCKET_BIND."""

    name = "audiosocket"

    def __init__(self, runtime: Runtime) -> None:
        self.server = AudioSocketServer(runtime)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def health(self) -> dict:
        server = self.server
        return {"ok": server.listening, "listen": f"{server.host}:{server.port}", "live_calls": len(server.bridges)}
