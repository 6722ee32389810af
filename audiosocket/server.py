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
from typing import Any

import openai
from sqlalchemy import select, update

from audiosocket.bridge import BridgeLimits, BridgeStats, CallBridge, ConnectModel, EndReason
from audiosocket.instructions import build_instructions, user_display_name
from audiosocket.protocol import DEFAULT_MAX_PAYLOAD, HANGUP_FRAME, Frame, FrameReader, Kind, ProtocolError
from audiosocket.realtime import ModelConnectionLost, RealtimeSession
from audiosocket.recorder import CallRef, RecordWriter
from audiosocket.tools import tool_definitions
from audiosocket.wrap_up import watch_for_wrap_up
from db import repo, transfers
from db.models import Call, CallStatus
from db.types import utcnow
from opendeep.llm import LlmNotConfigured, realtime_client
from opendeep.runtime import Runtime
from opendeep.settings import peer_allowed

log = logging.getLogger("opendeep.audiosocket")

UUID_TIMEOUT_SECONDS = 5.0   # Asterisk sends the UUID at once (1 ms in audiosocket-session.txt)
STOP_TIMEOUT_SECONDS = 5.0
RECORDS_STOP_TIMEOUT_SECONDS = 10.0   # stopping: how long the calls' last records may take to be written


class AudioSocketServer:
    """Listens for Asterisk's AudioSocket connections and runs one CallBridge per call."""

    def __init__(self, runtime: Runtime, *, host: str | None = None, port: int | None = None,
                 connect_model: ConnectModel | None = None, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 uuid_timeout: float = UUID_TIMEOUT_SECONDS, collect_stats: bool = False) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.host = host if host is not None else settings.audiosocket_bind.host
        self.port = port if port is not None else settings.audiosocket_bind.port
        self.max_payload = max_payload
        self.uuid_timeout = uuid_timeout
        self.connect_model = connect_model or self._connect_realtime
        self.collect_stats = collect_stats
        self.stats: list[BridgeStats] = []
        self.bridges: set[CallBridge] = set()
        self.records = RecordWriter(runtime.sessions, runtime.events)   # every call's transcripts and events
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task] = set()
        self._client: openai.AsyncOpenAI | None = None

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen for AudioSocket on {self.host}:{self.port}: "
                                     f"{exc.strerror} (check AUDIOSOCKET_BIND)") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("AudioSocket listening on %s:%s", self.host, self.port)
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

    # ------------------------------------------------------------------ one connection

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        peer = writer.get_extra_info("peername")
        try:
            await self._serve_connection(reader, writer, peer)
        except Exception:
            log.exception("AudioSocket connection from %s failed", peer)
        finally:
            self._handlers.discard(task)
            if not writer.is_closing():
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                peer: Any) -> None:
        host = peer[0] if isinstance(peer, tuple) and peer else None
        if not peer_allowed(self.runtime.settings, host):
            log.warning("AudioSocket connection from %s refused: the address is not in ASTERISK_ALLOWED_PEERS", peer)
            self.refused += 1
            return
        frames = FrameReader(self.max_payload)
        try:
            first, rest = await asyncio.wait_for(self._first_frames(reader, frames), self.uuid_timeout)
        except TimeoutError:
            log.warning("AudioSocket from %s sent no UUID frame within %g s; closing", peer, self.uuid_timeout)
            return
        except (ProtocolError, ConnectionError) as exc:
            log.warning("AudioSocket from %s: %s; closing", peer, exc)
            return
        if first is None:
            log.info("AudioSocket from %s closed before sending its UUID", peer)
            return
        if first.kind is not Kind.UUID:
            log.warning("AudioSocket from %s began with a 0x%02x frame, not the UUID; refused", peer, first.kind)
            self._refuse(writer)
            return
        as_uuid = first.uuid()
        found = await self._load_call(as_uuid)
        if found is None:
            log.warning("AudioSocket refused: UUID %s from %s matches no live call, or its call is already "
                        "connected (a UUID is good for one connection)", as_uuid, peer)
            self._refuse(writer)
            return
        ref, instructions, user_name, tools = found
        stats = BridgeStats() if self.collect_stats else None
        if stats is not None:
            self.stats.append(stats)
        settings = self.runtime.settings
        bridge = CallBridge(self.runtime, ref, reader, writer, instructions=instructions,
                            connect_model=self.connect_model, frame_reader=frames, initial_frames=rest,
                            limits=BridgeLimits(settings.max_call_seconds, settings.silence_timeout_seconds),
                            records=self.records, user_name=user_name, stats=stats, tools=tools)
        log.info("AudioSocket %s from %s: call %s (user %s)", as_uuid, peer, ref.call_id, ref.user_id)
        self.bridges.add(bridge)
        # Until-one-succeeds campaigns: a call is wrapped up politely once another call met the goal.
        watcher = asyncio.create_task(watch_for_wrap_up(self.runtime, bridge), name=f"call-{ref.call_id}-wrap-up")
        try:
            await bridge.run()
        finally:
            self.bridges.discard(bridge)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    @staticmethod
    async def _first_frames(reader: asyncio.StreamReader, frames: FrameReader) -> tuple[Frame | None, list[Frame]]:
        while True:
            data = await reader.read(4096)
            if not data:
                frames.finish()
                return None, []
            got = frames.feed(data)
            if got:
                return got[0], got[1:]

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        self.refused += 1
        with contextlib.suppress(Exception):
            writer.write(HANGUP_FRAME)

    async def _load_call(self, as_uuid: str) -> tuple[CallRef, str, str, list[dict[str, Any]]] | None:
        """Claim the live call with this AudioSocket UUID; its instructions and tools. The UUID is the only key
        Asterisk gives us, so this one lookup is not tenant-scoped; everything after it is (CallRef.user_id).
        The first connection claims it (one conditional UPDATE); any later one with the same UUID gets None."""
        async with self.runtime.sessions() as db, db.begin():
            claimed = await db.execute(
                update(Call).where(Call.audiosocket_uuid == as_uuid, Call.audiosocket_claimed_at.is_(None),
                                   Call.status != CallStatus.ENDED).values(audiosocket_claimed_at=utcnow()))
            if claimed.rowcount != 1:
                return None
            call = await db.scalar(select(Call).where(Call.audiosocket_uuid == as_uuid))
            task = await repo.get_task(db, call.user_id, call.task_id)
            user = await repo.get_user(db, call.user_id)
            if task is None or user is None:
                return None
            campaign = await repo.get_campaign(db, call.user_id, task.campaign_id)
            targets = [t.name for t in await transfers.list_transfer_targets(db, call.user_id)]
            instructions = build_instructions(task=task, user=user, campaign=campaign, transfer_targets=targets,
                                              recorded=self.runtime.settings.record_calls)
            return (CallRef(call.user_id, call.id, task.id), instructions, user_display_name(user),
                    tool_definitions(targets))

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
