"""One call, from the moment Asterisk's AudioSocket channel connects until the socket closes.

Audio moves one way through small steps, each a plain function called from the event loop's socket callbacks
(no task, future or coroutine per frame; issue 17):

    caller -> model:  caller_data (socket bytes) -> FrameReader (decode) -> [held while the model connects]
                      -> mu-law -> input_audio_buffer.append, written at once
    model -> caller:  _on_model_message (raw JSON) -> response.output_audio.delta -> slin (decode)
                      -> OutboundPacer (queue; the process's shared 20 ms clock writes the frames)

Every other server event goes through `_on_model_event`, the one place they are dispatched.

Three things can end the call: Asterisk (hangup frame / EOF), the AI (end_call, transfer_to_human) or a safety
rule (MAX_CALL_SECONDS, SILENCE_TIMEOUT_SECONDS, model connection lost -> outcome failed_ai). Whoever decides
first sets `_ended`; `_finish` then says goodbye if it can, sends the hangup frame, and closes the model session,
the socket and every task of the call.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import enum
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from audiosocket.pacing import BYTES_PER_MS, FRAME_SECONDS, SAMPLE_RATE, OutboundPacer
from audiosocket.protocol import HANGUP_FRAME, Frame, FrameReader, Kind, ProtocolError
from audiosocket.realtime import ModelConnectionLost, RealtimeSession, ServerEvent, mulaw_to_slin, resample
from audiosocket.recorder import CallRecorder, CallRef, RecordWriter
from audiosocket.tools import TOOL_DEFINITIONS, AiCallOutcome, CallTools
from audiosocket.usage import observe_usage
from db.models import CallOutcome, Speaker
from opendeep.metrics import MODEL_CONNECT_SECONDS, MODEL_FIRST_AUDIO_SECONDS
from opendeep.runtime import Runtime

log = logging.getLogger(__name__)

ConnectModel = Callable[[str, list[dict[str, Any]]], Awaitable[RealtimeSession]]

GOODBYE_SECONDS = 8.0          # longest wait for the AI's last words before the hangup frame
GOODBYE_START_SECONDS = 2.0     # ...and for it to start
MODEL_LOST_DRAIN_SECONDS = 1.0  # model gone: play what is queued, then hang up (well inside 2 s)
HANGUP_CLOSE_WAIT_SECONDS = 2.0  # after our hangup frame, how long Asterisk may take to close the socket
TRANSFER_WAIT_SECONDS = 3.0     # after a Redirect Asterisk takes the channel out of AudioSocket() itself
GOODBYE_PROMPT = "The call has to end now. Say one short, polite goodbye sentence and nothing else."
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


class CallerSocket(Protocol):
    """Asterisk's side of the call as the bridge sees it (server.AsteriskConnection): its transport, and
    `attach(bridge)`, after which every byte, the EOF and the loss of the socket go to the bridge's
    caller_data / caller_eof / caller_lost, in order (what arrived before is handed over first)."""

    transport: asyncio.Transport

    def attach(self, bridge: CallBridge) -> None: ...


class CallBridge:
    def __init__(self, runtime: Runtime, call: CallRef, caller: CallerSocket, *, instructions: str,
                 connect_model: ConnectModel, limits: BridgeLimits, records: RecordWriter,
                 frame_reader: FrameReader | None = None, initial_frames: Iterable[Frame] = (),
                 user_name: str = "the user", tools: list[dict[str, Any]] | None = None,
                 frames_per_append: int = 1) -> None:
        self.runtime = runtime
        self.call = call
        self.caller = caller
        self.transport = caller.transport
        self.instructions = instructions
        self.tool_definitions = TOOL_DEFINITIONS if tools is None else tools
        self.connect_model = connect_model
        self.limits = limits
        self.frames = frame_reader or FrameReader()
        self.frames_per_append = frames_per_append
        self._initial_frames = list(initial_frames)
        self.recorder = CallRecorder(records, call)
        self.tools = CallTools(runtime, call, self.recorder, on_end_call=self._on_end_call,
                               on_transfer=self._on_transfer, user_name=user_name)
        self._loop = asyncio.get_running_loop()
        self.pacer = OutboundPacer(self._write, on_first_audio=self._on_first_audio)
        self.model: RealtimeSession | None = None
        self.end_reason: EndReason | None = None
        self.end_detail = ""
        self.ai_outcome: tuple[AiCallOutcome, str] | None = None
        self.frames_in = 0
        self.reads_in = 0   # socket reads: frames_in / reads_in above 1 means the process fell behind
        self._ended: asyncio.Future[EndReason] = self._loop.create_future()
        self._caller_gone = asyncio.Event()     # Asterisk's side ended (hangup frame, EOF, socket lost)
        self._socket_closed = asyncio.Event()   # ... and the socket itself is closed
        self._ending = False
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[None]] = set()   # tools, barge-in messages
        self._started = 0.0
        self._last_activity = 0.0
        self._response_active = False
        self._callee_speaking = False
        self._audio_item = ""                      # the model item whose audio is queued / playing
        self._cancelled_items: set[str] = set()    # barged-in items: their late deltas are dropped
        self._speech_start_ms: dict[str, int] = {}
        self._resample_state: Any = None
        self._held: list[bytes] = []               # frames waiting for a full frames_per_append message
        self._held_since = 0.0
        self._limits_timer: asyncio.TimerHandle | None = None
        self._early_audio: collections.deque[bytes] = collections.deque(maxlen=EARLY_AUDIO_FRAMES)
        self._model_ready = False                  # connected and the early audio sent

    # ------------------------------------------------------------------ the call, top to bottom

    async def run(self) -> EndReason:
        """Bridge the call until it ends; returns why it ended. Nothing of the call outlives this."""
        self._started = self._last_activity = self._loop.time()
        self.recorder.bridged()
        self.recorder.event("audiosocket.connected", {})
        # Frames go out from the first moment: Asterisk hangs up after 2 s without one.
        self.pacer.start()
        self._tasks = [
            asyncio.create_task(self._guard(self._connect_model()), name=f"call-{self.call.call_id}-model"),
        ]
        self._limits_timer = self._loop.call_later(self.limits.check_seconds, self._check_limits)
        self._on_caller_frames(self._initial_frames)
        self.caller.attach(self)   # after a hangup frame among them, what follows is ignored but the close is seen
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
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if isinstance(exc, ModelConnectionLost):
            log.warning("call %s: %s", self.call.call_id, exc)
            self._response_active = False
            self._end(EndReason.MODEL_LOST, str(exc))
        else:
            log.error("call %s: unexpected error", self.call.call_id, exc_info=exc)
            self._end(EndReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ caller -> model (socket callbacks)

    def caller_data(self, data: bytes) -> None:
        """Bytes from Asterisk."""
        if self._caller_gone.is_set():
            return
        self.reads_in += 1
        slin = self.frames.one_slin8_frame(data)
        if slin is not None:   # nearly every read: one 20 ms frame
            self.frames_in += 1
            try:
                self._to_model([slin])
            except Exception as exc:
                self._fail(exc)
            return
        try:
            frames = self.frames.feed(data)
        except ProtocolError as exc:
            self._protocol_error(str(exc))
            return
        try:
            self._on_caller_frames(frames)
        except Exception as exc:
            self._fail(exc)

    def caller_eof(self) -> None:
        """Asterisk closed its side: the callee hung up (or a transfer took the channel away)."""
        if self._caller_gone.is_set():
            return
        try:
            self.frames.finish()   # raises ProtocolError if a frame was cut off
        except ProtocolError as exc:
            self._protocol_error(str(exc))
            return
        self._flush_held()
        self._caller_gone.set()
        self._caller_closed("EOF from Asterisk")

    def caller_lost(self, exc: BaseException | None) -> None:
        """The socket is closed (after an EOF, our own close, or a reset)."""
        self._socket_closed.set()
        if self._caller_gone.is_set():
            return
        self._caller_gone.set()
        try:
            self.frames.finish()
        except ProtocolError as cut:   # a reset (not a close) right after a truncated frame
            log.warning("call %s: AudioSocket protocol error: %s", self.call.call_id, cut)
            self._end(EndReason.PROTOCOL_ERROR, f"{cut} ({exc!r})")
            return
        self._caller_closed(f"socket: {exc!r}")

    def _protocol_error(self, detail: str) -> None:
        log.warning("call %s: AudioSocket protocol error: %s", self.call.call_id, detail)
        self._caller_gone.set()
        self._end(EndReason.PROTOCOL_ERROR, detail)

    def _on_caller_frames(self, frames: list[Frame]) -> bool:
        """What one socket read brought (normally one 20 ms frame); False when it ends the caller's side."""
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
                self._to_model(audio)
                audio = []
            self._flush_held()
            if not self._on_caller_control(frame):
                return False
        if audio:
            self._to_model(audio)
        return True

    def _to_model(self, audio: list[bytes]) -> None:
        """Each frame in order, `frames_per_append` of them per append (normally one read, one frame, one
        append; with 2, every other frame waits 20 ms for its partner)."""
        if self._ending:
            return   # hanging up: there is nobody to hear it
        if not self._model_ready:
            self._early_audio.extend(audio)   # still connecting: sent once the session is ready
            return
        held = self._held
        if not held:
            self._held_since = self._loop.time()
        held += audio
        step = self.frames_per_append
        if len(held) < step:
            return
        model = self.model
        assert model is not None
        if step == 1 and len(held) == 1:
            model.append_now(held[0])
            held.clear()
            return
        whole = len(held) - len(held) % step
        for start in range(0, whole, step):
            model.append_now(b"".join(held[start:start + step]))
        del held[:whole]

    def _flush_held(self) -> None:
        """Send a frame still waiting for its partner (before a DTMF, at the end, when no frame followed)."""
        if self._held and self._model_ready and not self._ending and self.model is not None:
            audio, self._held = b"".join(self._held), []
            self.model.append_now(audio)

    def _caller_closed(self, detail: str) -> None:
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

    async def _connect_model(self) -> None:
        connecting = self._loop.time()
        model = self.model = await self.connect_model(self.instructions, self.tool_definitions)
        MODEL_CONNECT_SECONDS.observe(self._loop.time() - connecting)
        if self._ending:
            return
        early = len(self._early_audio)
        while self._early_audio:   # what the callee said while we connected, in order
            chunk = [self._early_audio.popleft() for _ in range(min(EARLY_AUDIO_CHUNK, len(self._early_audio)))]
            model.append_now(b"".join(chunk))
        self._model_ready = True   # no await since the buffer was emptied: later frames go straight to the model
        self.recorder.event("ai.connected", {"model": model.model, "early_audio_ms": early * 20})
        model.listen(self._on_model_message, self._on_model_lost)
        await model.create_response()   # the greeting: the callee answered and waits for us

    def _on_model_message(self, raw: bytes) -> None:
        """One server event, raw, straight from the model's socket."""
        try:
            event = json.loads(raw)
        except ValueError:
            self._fail(ModelConnectionLost(f"realtime model sent something that is not JSON: {raw[:80]!r}"))
            return
        if not isinstance(event, dict):
            self._fail(ModelConnectionLost(f"realtime model sent a JSON {type(event).__name__}, not an event"))
            return
        try:
            if event.get("type") == ServerEvent.AUDIO_DELTA:
                self._on_audio_delta(event)   # most events by far: no typed object, no other dispatch
            else:
                self._on_model_event(event)
        except Exception as exc:
            self._fail(exc)

    def _on_model_lost(self, exc: BaseException | None) -> None:
        if self._ended.done():
            return   # we closed it, or the call ends anyway
        self._fail(ModelConnectionLost(f"realtime model connection lost: {exc or 'closed by the server'}"))

    def _on_audio_delta(self, event: dict[str, Any]) -> None:
        item = event.get("item_id", "")
        if item in self._cancelled_items:
            return   # audio of an interrupted answer still in flight: the callee must not hear it
        self._audio_item = item
        self.pacer.enqueue(mulaw_to_slin(base64.b64decode(event.get("delta", ""))), item)
        self._last_activity = self._loop.time()

    def _on_model_event(self, event: dict[str, Any]) -> None:
        """Every server event but audio deltas, in arrival order: the one place they are dispatched."""
        type_ = event.get("type")
        observe_usage(self.recorder, self.runtime.settings, self.model.model if self.model else "", event)   # cost
        if type_ == ServerEvent.SPEECH_STARTED:
            self._barge_in(event)
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
            self._side_task(self._run_tool(event), f"tool-{event.get('name')}")
        elif type_ == ServerEvent.ERROR:
            error = event.get("error") or {}
            log.warning("call %s: realtime model error: %s", self.call.call_id, error.get("message", error))
            self.recorder.event("ai.error", {"error": error})

    def _side_task(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.create_task(self._guard(work), name=f"call-{self.call.call_id}-{name}")
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _barge_in(self, event: dict[str, Any]) -> None:
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
        self._side_task(self._stop_answer(item, played, cancel=self._response_active), "barge-in")
        self.recorder.event("ai.barge_in", {"item_id": item, "played_ms": played,
                                            "dropped_ms": dropped // BYTES_PER_MS})

    async def _stop_answer(self, item: str, played_ms: int, *, cancel: bool) -> None:
        model = self.model
        assert model is not None
        if cancel:
            await model.cancel_response()
        await model.truncate(item, played_ms)

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

    def _on_first_audio(self, at: float) -> None:
        MODEL_FIRST_AUDIO_SECONDS.observe(at - self._started)

    # ------------------------------------------------------------------ safety limits

    def _check_limits(self) -> None:
        """Every `check_seconds` (a loop timer, not a task): call length, silence, a held frame left alone."""
        limits = self.limits
        now = self._loop.time()
        if self._ended.done():
            return
        if now - self._started >= limits.max_call_seconds:
            self._end(EndReason.MAX_DURATION, f"{limits.max_call_seconds:g} s reached")
            return
        if self._held and now - self._held_since > 2 * FRAME_SECONDS:
            try:
                self._flush_held()   # Asterisk stopped sending frames: do not keep the last one back
            except Exception as exc:
                self._fail(exc)
                return
        # Somebody is talking, or the AI waits for the user's answer: that is not silence.
        if self.tools.pending or self._callee_speaking or self._response_active or not self.pacer.idle:
            self._last_activity = now
        elif now - self._last_activity >= limits.silence_timeout_seconds:
            self._end(EndReason.SILENCE, f"nobody spoke for {limits.silence_timeout_seconds:g} s")
            return
        self._limits_timer = self._loop.call_at(now + limits.check_seconds, self._check_limits)

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
        if self._limits_timer is not None:
            self._limits_timer.cancel()
        if reason not in NO_HANGUP_FRAME and not self._caller_gone.is_set():
            with contextlib.suppress(Exception):
                self._write(HANGUP_FRAME)   # 00 00 00: Asterisk closes within a millisecond
            # Let Asterisk close first: a frame it writes to a socket we already closed is a logged error.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._caller_gone.wait(), HANGUP_CLOSE_WAIT_SECONDS)
        tasks = [*self._tasks, *self._side_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.model is not None:
            await self.model.close()
        self.transport.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._socket_closed.wait(), 1.0)
        duration_ms = self._offset_ms(self._loop.time())
        if reason in FAILED_AI:
            self.recorder.outcome_hint(CallOutcome.FAILED_AI)
            self.recorder.event("ai.failed", {"reason": reason.value, "detail": self.end_detail})
        self.recorder.event("audiosocket.ended", {
            "reason": reason.value, "detail": self.end_detail, "duration_ms": duration_ms,
            "frames_in": self.frames_in, "reads_in": self.reads_in, "frames_out": self.pacer.frames_written,
            "audio_frames_out": self.pacer.audio_frames_written})
        await self.recorder.close()
        log.info("call %s: AudioSocket ended (%s%s) after %.1f s", self.call.call_id, reason.value,
                 f": {self.end_detail}" if self.end_detail else "", duration_ms / 1000)

    # ------------------------------------------------------------------ helpers

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport.is_closing():
            raise ConnectionResetError("AudioSocket connection is closed")
        transport.write(data)

    def _offset_ms(self, when: float) -> int:
        return max(0, int((when - self._started) * 1000))
