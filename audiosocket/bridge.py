"""One call, from the moment Asterisk's AudioSocket() connects until the socket closes.

Audio moves one way through small steps:

    caller -> model:  socket bytes -> FrameReader (decode) -> [held while the model connects] -> mu-law
                      -> input_audio_buffer.append
    model -> caller:  response.output_audio.delta -> slin (decode) -> OutboundPacer (queue, pace) -> socket (write)

and three things can end the call: Asterisk (hangup frame / EOF), the AI (end_call, transfer_to_human) or a
safety rule (MAX_CALL_SECONDS, SILENCE_TIMEOUT_SECONDS, model connection lost -> outcome failed_ai). Whoever
decides first sets `_ended`; `_finish` then says goodbye if it can, sends the hangup frame, and closes the
model session, the socket and every task of the call.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from audiosocket.pacing import BYTES_PER_MS, FRAME_SECONDS, SAMPLE_RATE, OutboundPacer
from audiosocket.protocol import HANGUP_FRAME, Frame, FrameReader, Kind, ProtocolError
from audiosocket.realtime import ModelConnectionLost, RealtimeSession, ServerEvent, mulaw_to_slin, resample
from audiosocket.recorder import CallRecorder, CallRef, RecordWriter
from audiosocket.tools import TOOL_DEFINITIONS, AiCallOutcome, CallTools
from db.models import CallOutcome, Speaker
from opendeep.runtime import Runtime

log = logging.getLogger("opendeep.audiosocket.bridge")

ConnectModel = Callable[[str, list[dict[str, Any]]], Awaitable[RealtimeSession]]

GOODBYE_SECONDS = 8.0          # longest wait for the AI's last words before the hangup frame
GOODBYE_START_SECONDS = 2.0     # ...and for it to start
MODEL_LOST_DRAIN_SECONDS = 1.0  # model gone: play what is queued, then hang up (well inside 2 s)
HANGUP_CLOSE_WAIT_SECONDS = 2.0  # after our hangup frame, how long Asterisk may take to close the socket
TRANSFER_WAIT_SECONDS = 3.0     # after a Redirect Asterisk takes the channel out of AudioSocket() itself
GOODBYE_PROMPT = "The call has to end now. Say one short, polite goodbye sentence and nothing else."
READ_SIZE = 65536
# 20 ms frames per input_audio_buffer.append. 1: each frame goes to the model as it arrives. 2 halves the
# WebSocket messages (with an echoing model, about 30 % less CPU per call: bench/bench_audiosocket.py
# --input-chunk 2) at the price of about 10 ms more median latency caller -> model.
INPUT_CHUNK_FRAMES = 1
# When a read brings more audio frames than this (the event loop is behind), they go to the model as one append,
# so an overloaded process catches up instead of falling further behind. 0: never -- every append is one 20 ms
# frame, which tests/test_e2e_campaign.py pins down; see bench/bench_audiosocket.py --catch-up.
CATCH_UP_FRAMES = 0
# The callee's audio from the moment of answer is held while the model session connects ("Hello?" is often said
# before it is ready), then sent in order. 10 s of it at most; a model that takes longer ends the call anyway.
EARLY_AUDIO_FRAMES = 500
EARLY_AUDIO_CHUNK = 50   # held frames per append when they are sent: 1 s, one WebSocket message


class EndReason(enum.StrEnum):
    CALLER_HUNG_UP = "caller_hung_up"      # hangup/error frame or EOF from Asterisk
    AI_ENDED = "ai_ended"                  # end_call tool
    TRANSFERRED = "transferred"            # transfer_to_human tool
    MODEL_LOST = "model_lost"              # realtime model unreachable or disconnected
    MAX_DURATION = "max_duration"
    SILENCE = "silence_timeout"
    PROTOCOL_ERROR = "protocol_error"      # Asterisk's side sent bytes that are not AudioSocket
    SHUTDOWN = "shutdown"                  # OpenDeep is stopping
    GOAL_MET = "goal_met"                  # the campaign's goal was met on another call (audiosocket/wrap_up.py)
    INTERNAL_ERROR = "internal_error"


FAILED_AI = frozenset({EndReason.MODEL_LOST, EndReason.INTERNAL_ERROR})
SAY_GOODBYE = frozenset({EndReason.MAX_DURATION, EndReason.SILENCE, EndReason.SHUTDOWN, EndReason.GOAL_MET})
NO_HANGUP_FRAME = frozenset({EndReason.CALLER_HUNG_UP, EndReason.TRANSFERRED})


@dataclass(frozen=True)
class BridgeLimits:
    max_call_seconds: float
    silence_timeout_seconds: float
    check_seconds: float = 0.25


@dataclass
class BridgeStats:
    """Measurements for bench/bench_audiosocket.py (seconds)."""

    lateness: list[float] = field(default_factory=list)         # outbound frame vs. its 20 ms grid slot
    queue_delays: list[float] = field(default_factory=list)     # model audio queued -> its first frame written
    inbound: list[float] = field(default_factory=list)          # caller bytes read -> append sent to model
    outbound: list[float] = field(default_factory=list)         # model event received -> audio queued


class CallBridge:
    def __init__(self, runtime: Runtime, call: CallRef, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, instructions: str, connect_model: ConnectModel,
                 limits: BridgeLimits, records: RecordWriter, frame_reader: FrameReader | None = None,
                 initial_frames: Iterable[Frame] = (), user_name: str = "the user",
                 stats: BridgeStats | None = None, tools: list[dict[str, Any]] | None = None) -> None:
        self.runtime = runtime
        self.call = call
        self.reader = reader
        self.writer = writer
        self.instructions = instructions
        self.tool_definitions = TOOL_DEFINITIONS if tools is None else tools
        self.connect_model = connect_model
        self.limits = limits
        self.frames = frame_reader or FrameReader()
        self._initial_frames = list(initial_frames)
        self.stats = stats
        self.recorder = CallRecorder(records, call)
        self.tools = CallTools(runtime, call, self.recorder, on_end_call=self._on_end_call,
                               on_transfer=self._on_transfer, user_name=user_name)
        self.pacer: OutboundPacer | None = None
        self.model: RealtimeSession | None = None
        self.end_reason: EndReason | None = None
        self.end_detail = ""
        self.ai_outcome: tuple[AiCallOutcome, str] | None = None
        self.frames_in = 0
        self._loop = asyncio.get_running_loop()
        self._ended: asyncio.Future[EndReason] = self._loop.create_future()
        self._caller_gone = asyncio.Event()
        self._ending = False
        self._tasks: list[asyncio.Task] = []
        self._tool_tasks: set[asyncio.Task] = set()
        self._started = 0.0
        self._last_activity = 0.0
        self._response_active = False
        self._callee_speaking = False
        self._audio_item = ""                      # the model item whose audio is queued / playing
        self._cancelled_items: set[str] = set()    # barged-in items: their late deltas are dropped
        self._speech_start_ms: dict[str, int] = {}
        self._resample_state: Any = None
        self._held_audio: list[bytes] = []         # frames waiting for a full INPUT_CHUNK_FRAMES append
        self._early_audio: collections.deque[bytes] = collections.deque(maxlen=EARLY_AUDIO_FRAMES)
        self._model_ready = False                  # connected and the early audio sent
        self._held_read_at: list[float] = []

    # ------------------------------------------------------------------ the call, top to bottom

    async def run(self) -> EndReason:
        """Bridge the call until it ends; returns why it ended. Nothing of the call outlives this."""
        self._started = self._last_activity = self._loop.time()
        self.recorder.bridged()
        self.recorder.event("audiosocket.connected", {})
        stats = self.stats
        self.pacer = OutboundPacer(self._write, lateness=stats.lateness if stats else None,
                                   queue_delays=stats.queue_delays if stats else None)
        # Frames go out from the first moment: AudioSocket() hangs up after 2 s without one.
        self.pacer.start()
        self._tasks = [
            asyncio.create_task(self._guard(self._from_caller()), name=f"call-{self.call.call_id}-caller"),
            asyncio.create_task(self._guard(self._from_model()), name=f"call-{self.call.call_id}-model"),
            asyncio.create_task(self._guard(self._watch_limits()), name=f"call-{self.call.call_id}-limits"),
        ]
        try:
            reason = await asyncio.shield(self._ended)
        except asyncio.CancelledError:
            self._end(EndReason.SHUTDOWN)
            reason = EndReason.SHUTDOWN
            await self._finish(reason)
            raise
        await self._finish(reason)
        return reason

    def request_end(self, reason: EndReason, detail: str = "") -> None:
        """End the call from outside (server shutdown; a wrap-up the AI did not finish in time)."""
        self._end(reason, detail)

    @property
    def responding(self) -> bool:
        """The model is producing a response now (a new one must wait: the API refuses two at once)."""
        return self._response_active

    @property
    def ended(self) -> bool:
        return self._ended.done()

    def _end(self, reason: EndReason, detail: str = "") -> None:
        if not self._ended.done():
            self.end_reason, self.end_detail = reason, detail
            self._ended.set_result(reason)

    async def _guard(self, work: Awaitable[None]) -> None:
        """Turn whatever stops a part of the call into a reason the call ends for."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except ProtocolError as exc:
            log.warning("call %s: AudioSocket protocol error: %s", self.call.call_id, exc)
            self._caller_gone.set()
            self._end(EndReason.PROTOCOL_ERROR, str(exc))
        except ModelConnectionLost as exc:
            log.warning("call %s: %s", self.call.call_id, exc)
            self._response_active = False
            self._end(EndReason.MODEL_LOST, str(exc))
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            self._caller_gone.set()
            try:
                self.frames.finish()
            except ProtocolError as cut:   # a reset (not a close) right after a truncated frame
                log.warning("call %s: AudioSocket protocol error: %s", self.call.call_id, cut)
                self._end(EndReason.PROTOCOL_ERROR, f"{cut} ({exc!r})")
                return
            self._socket_closed(f"socket: {exc!r}")
        except Exception as exc:
            log.exception("call %s: unexpected error", self.call.call_id)
            self._end(EndReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ caller -> model

    async def _from_caller(self) -> None:
        if not await self._on_caller_frames(self._initial_frames, self._loop.time()):
            return
        while True:
            data = await self.reader.read(READ_SIZE)
            if not data:
                self._caller_gone.set()
                self.frames.finish()          # raises ProtocolError if a frame was cut off
                self._socket_closed("EOF from Asterisk")
                return
            if not await self._on_caller_frames(self.frames.feed(data), self._loop.time()):
                return

    async def _on_caller_frames(self, frames: list[Frame], read_at: float) -> bool:
        """Handle what one socket read brought; False when it ends the caller's side.

        Normally that is one 20 ms frame, and each frame is one append. With CATCH_UP_FRAMES set, more frames
        than that in one read (the loop fell behind) go to the model as one append: the same audio in the same
        order, with one WebSocket message instead of one per frame.
        """
        audio: list[bytes] = []
        for frame in frames:
            if frame.is_audio:
                self.frames_in += 1
                slin = frame.payload
                if frame.kind is not Kind.SLIN8:   # AudioSocket channel driver at a higher rate
                    slin, self._resample_state = resample(slin, frame.sample_rate, SAMPLE_RATE,
                                                          self._resample_state)
                audio.append(slin)
                continue
            if audio:   # audio before a DTMF or hangup frame goes to the model first
                await self._to_model(audio, read_at)
                audio = []
            if not self._on_caller_control(frame):
                return False
        if audio:
            await self._to_model(audio, read_at)
        return True

    async def _to_model(self, audio: list[bytes], read_at: float) -> None:
        if self._ending:
            return   # hanging up: there is nobody to hear it
        if not self._model_ready:
            self._early_audio.extend(audio)   # still connecting: sent once the session is ready
            return
        model = self.model
        stats = self.stats
        if len(audio) > 1 and INPUT_CHUNK_FRAMES == 1 and not (CATCH_UP_FRAMES and len(audio) > CATCH_UP_FRAMES):
            for slin in audio:   # keep one append per frame
                await model.append_audio(slin)
            if stats is not None:
                stats.inbound.extend([self._loop.time() - read_at] * len(audio))
            return
        if INPUT_CHUNK_FRAMES > 1:
            held = self._held_audio
            held += audio
            if stats is not None:
                self._held_read_at += [read_at] * len(audio)
            if len(held) < INPUT_CHUNK_FRAMES:
                return
            audio, self._held_audio = held, []
        await model.append_audio(audio[0] if len(audio) == 1 else b"".join(audio))
        if stats is not None:
            now = self._loop.time()
            if INPUT_CHUNK_FRAMES > 1:   # each frame's own wait, the held ones included
                stats.inbound.extend(now - at for at in self._held_read_at)
                self._held_read_at = []
            else:
                stats.inbound.append(now - read_at)

    def _socket_closed(self, detail: str) -> None:
        """Asterisk closed the socket: the callee hung up, or our transfer's Redirect took the call away (which
        may close it before the AMI answers the Redirect)."""
        if self.tools.transferring:
            self._end(EndReason.TRANSFERRED, self.tools.transferring)
        else:
            self._end(EndReason.CALLER_HUNG_UP, detail)

    def _on_caller_control(self, frame: Frame) -> bool:
        """A frame from Asterisk that is not audio; False when it ends the caller's side."""
        if frame.kind is Kind.DTMF:
            self._last_activity = self._loop.time()
            self.recorder.event("callee.dtmf", {"digit": frame.digit()})
            return True
        if frame.kind is Kind.HANGUP:
            self._caller_gone.set()
            self._end(EndReason.CALLER_HUNG_UP, "hangup frame from Asterisk")
            return False
        if frame.kind is Kind.ERROR:
            self._caller_gone.set()
            self._end(EndReason.CALLER_HUNG_UP, f"error frame from Asterisk ({frame.payload.hex()})")
            return False
        log.warning("call %s: ignoring a second UUID frame", self.call.call_id)
        return True

    # ------------------------------------------------------------------ model -> caller

    async def _from_model(self) -> None:
        self.model = await self.connect_model(self.instructions, self.tool_definitions)
        if self._ending:
            return
        early = len(self._early_audio)
        while self._early_audio:   # what the callee said while we connected, in order; more may arrive meanwhile
            chunk = [self._early_audio.popleft() for _ in range(min(EARLY_AUDIO_CHUNK, len(self._early_audio)))]
            await self.model.append_audio(b"".join(chunk))
        self._model_ready = True   # no await since the buffer was empty: later frames go straight to the model
        self.recorder.event("ai.connected", {"model": self.model.model, "early_audio_ms": early * 20})
        await self.model.create_response()   # the greeting: the callee answered and waits for us
        next_event = self.model.next_event
        while True:
            event = await next_event()
            if event.get("type") == ServerEvent.AUDIO_DELTA:
                self._on_audio_delta(event)   # most events by far: no coroutine for them
            else:
                await self._on_model_event(event)

    def _on_audio_delta(self, event: dict[str, Any]) -> None:
        item = event.get("item_id", "")
        if item in self._cancelled_items:
            return   # audio of an interrupted answer still in flight: the callee must not hear it
        slin = mulaw_to_slin(base64.b64decode(event.get("delta", "")))
        self._audio_item = item
        self.pacer.enqueue(slin, item)
        now = self._loop.time()
        if self.stats is not None:
            self.stats.outbound.append(now - self.model.last_received_at)
        self._last_activity = now

    async def _on_model_event(self, event: dict[str, Any]) -> None:
        type_ = event.get("type")
        if type_ == ServerEvent.AUDIO_DELTA:
            self._on_audio_delta(event)
        elif type_ == ServerEvent.SPEECH_STARTED:
            await self._barge_in(event)
        elif type_ == ServerEvent.SPEECH_STOPPED:
            self._callee_speaking = False
            self._last_activity = self._loop.time()
        elif type_ == ServerEvent.AUDIO_DONE:
            self.pacer.mark_complete()
        elif type_ == ServerEvent.RESPONSE_CREATED:
            self._response_active = True
        elif type_ == ServerEvent.RESPONSE_DONE:
            self._response_active = False
            self.pacer.mark_complete()
        elif type_ == ServerEvent.INPUT_TRANSCRIPT_DONE:
            start = self._speech_start_ms.pop(event.get("item_id", ""), None)
            self.recorder.transcript(Speaker.CALLEE, event.get("transcript", ""),
                                     start if start is not None else self._offset_ms(self._loop.time()))
        elif type_ == ServerEvent.AUDIO_TRANSCRIPT_DONE:
            started = self.pacer.item_started_at.get(event.get("item_id", ""), self._loop.time())
            self.recorder.transcript(Speaker.AGENT, event.get("transcript", ""), self._offset_ms(started))
        elif type_ == ServerEvent.FUNCTION_CALL_DONE:
            task = asyncio.create_task(self._guard(self._run_tool(event)),
                                       name=f"call-{self.call.call_id}-tool-{event.get('name')}")
            self._tool_tasks.add(task)
            task.add_done_callback(self._tool_tasks.discard)
        elif type_ == ServerEvent.ERROR:
            error = event.get("error") or {}
            log.warning("call %s: realtime model error: %s", self.call.call_id, error.get("message", error))
            self.recorder.event("ai.error", {"error": error})

    async def _barge_in(self, event: dict[str, Any]) -> None:
        """The callee started speaking: stop our audio at once, cancel the answer, and tell the model how much
        of it was actually heard."""
        self._callee_speaking = True
        self._last_activity = self._loop.time()
        self._speech_start_ms[event.get("item_id", "")] = int(event.get("audio_start_ms") or 0)
        dropped = self.pacer.clear()   # the next tick already sends silence
        item = self._audio_item
        if not item or item in self._cancelled_items or not (dropped or self._response_active):
            return
        self._cancelled_items.add(item)
        played = self.pacer.played_ms(item)
        if self._response_active:
            await self.model.cancel_response()
        await self.model.truncate(item, played)
        self.recorder.event("ai.barge_in", {"item_id": item, "played_ms": played,
                                            "dropped_ms": dropped // BYTES_PER_MS})

    async def _run_tool(self, event: dict[str, Any]) -> None:
        result = await self.tools.run(event.get("name", ""), event.get("arguments", "{}"))
        if self.model is None or self.model.closed or (self._ending and self.end_reason is not EndReason.AI_ENDED):
            return
        # After end_call or a transfer the model has nothing left to say: no new response.
        await self.model.function_output(event.get("call_id", ""), result, respond=not self._ended.done())

    def _on_end_call(self, outcome: AiCallOutcome, summary: str) -> None:
        self.ai_outcome = (outcome, summary)
        self._end(EndReason.AI_ENDED, outcome.value)

    def _on_transfer(self, extension: str) -> None:
        self._end(EndReason.TRANSFERRED, extension)

    # ------------------------------------------------------------------ safety limits

    async def _watch_limits(self) -> None:
        limits = self.limits
        while True:
            await asyncio.sleep(limits.check_seconds)
            now = self._loop.time()
            if now - self._started >= limits.max_call_seconds:
                self._end(EndReason.MAX_DURATION, f"{limits.max_call_seconds:g} s reached")
                return
            # Somebody is talking, or the AI waits for the user's answer: that is not silence.
            if (self.tools.pending or self._callee_speaking or self._response_active
                    or (self.pacer is not None and not self.pacer.idle)):
                self._last_activity = now
            elif now - self._last_activity >= limits.silence_timeout_seconds:
                self._end(EndReason.SILENCE, f"nobody spoke for {limits.silence_timeout_seconds:g} s")
                return

    # ------------------------------------------------------------------ the end

    async def _finish(self, reason: EndReason) -> None:
        self._ending = True
        try:
            await self._say_goodbye(reason)
        finally:
            await self._close(reason)

    async def _say_goodbye(self, reason: EndReason) -> None:
        if reason is EndReason.AI_ENDED:
            await self._drain(GOODBYE_SECONDS)
        elif reason in SAY_GOODBYE and self.model is not None and not self.model.closed:
            try:
                await self.model.create_response(GOODBYE_PROMPT)
            except ModelConnectionLost:
                self._response_active = False
                return
            # Wait for the goodbye to start (a model that does not answer must not hold the line), then for it
            # to be played.
            started = self._loop.time()
            while (self._loop.time() - started < GOODBYE_START_SECONDS and not self._response_active
                   and self.pacer.idle and not self._caller_gone.is_set()):
                await asyncio.sleep(FRAME_SECONDS)
            await self._drain(GOODBYE_SECONDS if reason is not EndReason.SHUTDOWN else 2.0)
        elif reason in FAILED_AI:
            self._response_active = False
            await self._drain(MODEL_LOST_DRAIN_SECONDS)
        elif reason is EndReason.TRANSFERRED:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._caller_gone.wait(), TRANSFER_WAIT_SECONDS)

    async def _drain(self, cap: float) -> None:
        """Let queued audio (and an answer still being generated) play out, at most `cap` seconds."""
        deadline = self._loop.time() + cap
        while self._loop.time() < deadline and not self._caller_gone.is_set() and not self.pacer.closed:
            if not self._response_active and self.pacer.idle:
                return
            await asyncio.sleep(FRAME_SECONDS)

    async def _close(self, reason: EndReason) -> None:
        self.pacer.stop()
        if reason not in NO_HANGUP_FRAME and not self._caller_gone.is_set():
            with contextlib.suppress(Exception):
                self._write(HANGUP_FRAME)   # 00 00 00: Asterisk closes within a millisecond
            # Let Asterisk close first: a frame it writes to a socket we already closed is a logged error.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._caller_gone.wait(), HANGUP_CLOSE_WAIT_SECONDS)
        tasks = [*self._tasks, *self._tool_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.model is not None:
            await self.model.close()
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)
        duration_ms = self._offset_ms(self._loop.time())
        if reason in FAILED_AI:
            self.recorder.outcome_hint(CallOutcome.FAILED_AI)
            self.recorder.event("ai.failed", {"reason": reason.value, "detail": self.end_detail})
        self.recorder.event("audiosocket.ended", {
            "reason": reason.value, "detail": self.end_detail, "duration_ms": duration_ms,
            "frames_in": self.frames_in, "frames_out": self.pacer.frames_written,
            "audio_frames_out": self.pacer.audio_frames_written})
        await self.recorder.close()
        log.info("call %s: AudioSocket ended (%s%s) after %.1f s", self.call.call_id, reason.value,
                 f": {self.end_detail}" if self.end_detail else "", duration_ms / 1000)

    # ------------------------------------------------------------------ helpers

    def _write(self, data: bytes) -> None:
        transport = self.writer.transport
        if transport.is_closing():
            raise ConnectionResetError("AudioSocket connection is closed")
        transport.write(data)

    def _offset_ms(self, when: float) -> int:
        return max(0, int((when - self._started) * 1000))
