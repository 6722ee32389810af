"""The call AI's OpenAI Realtime session (GA shape), through the `openai` SDK's realtime client.

G.711 mu-law at 8 kHz both ways (`audio/pcmu`): Asterisk's slin 8 kHz needs only a mu-law encode/decode, no
resampling. Server VAD settings come from REALTIME_VAD_*: a higher threshold means less false barge-in from the
echo of our own audio.

The SDK opens the session and sends its control events (`session.update`, `response.create`, `response.cancel`,
`conversation.item.*`), typed. The per-frame path does not go through it (issue 17's measurements): the
50-per-second `input_audio_buffer.append` is written pre-serialised and synchronously (`append_now`), and server
events reach the bridge as raw bytes through a callback (`listen`), parsed once, with no task, future or typed
object per message (model_socket.py). Either way the wire carries the GA event shapes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import logging
import warnings
from typing import Any

import openai
from websockets.exceptions import ConnectionClosed

from audiosocket.model_socket import ModelWebSocket, OnLost, OnMessage
from opendeep.settings import Settings

with warnings.catch_warnings():  # stdlib audioop: deprecated in 3.11, present until 3.13 (audioop-lts after)
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

log = logging.getLogger(__name__)

AUDIO_FORMAT = "audio/pcmu"
CONNECT_TIMEOUT_SECONDS = 10.0
CLOSE_TIMEOUT_SECONDS = 2.0


class ServerEvent(enum.StrEnum):
    """The Realtime server events the bridge acts on."""

    SESSION_CREATED = "session.created"
    SESSION_UPDATED = "session.updated"
    SPEECH_STARTED = "input_audio_buffer.speech_started"
    SPEECH_STOPPED = "input_audio_buffer.speech_stopped"
    RESPONSE_CREATED = "response.created"
    AUDIO_DELTA = "response.output_audio.delta"
    AUDIO_DONE = "response.output_audio.done"
    AUDIO_TRANSCRIPT_DONE = "response.output_audio_transcript.done"
    INPUT_TRANSCRIPT_DONE = "conversation.item.input_audio_transcription.completed"
    FUNCTION_CALL_DONE = "response.function_call_arguments.done"
    RESPONSE_DONE = "response.done"
    ERROR = "error"


class ModelConnectionLost(ConnectionError):
    """The realtime model is unreachable or the WebSocket closed; the call cannot continue with the AI."""


def mulaw_to_slin(data: bytes) -> bytes:
    """G.711 mu-law -> signed 16-bit little-endian PCM."""
    return audioop.ulaw2lin(data, 2)


def resample(slin: bytes, from_rate: int, to_rate: int, state: Any = None) -> tuple[bytes, Any]:
    """Resample 16-bit mono PCM (for the AudioSocket channel driver's higher slin rates); keeps filter state."""
    if from_rate == to_rate:
        return slin, state
    return audioop.ratecv(slin, 2, 1, from_rate, to_rate, state)


def session_config(settings: Settings, instructions: str, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The `session.update` body: audio/pcmu both ways, server VAD from settings, our voice and tools."""
    return {
        "type": "realtime",
        "instructions": instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": AUDIO_FORMAT},
                # Transcribes the callee's side for call_transcripts; the agent's side comes with its audio.
                "transcription": {"model": settings.openai_transcribe_model},
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": settings.realtime_vad_threshold,
                    "silence_duration_ms": settings.realtime_vad_silence_ms,
                    "prefix_padding_ms": settings.realtime_vad_prefix_ms,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": AUDIO_FORMAT}, "voice": settings.openai_realtime_voice},
        },
        "tools": tools,
        "tool_choice": "auto",
    }


_APPEND_HEAD = b'{"type":"input_audio_buffer.append","audio":"'
_APPEND_TAIL = b'"}'


class RealtimeSession:
    """One call's connection to the realtime model. Every failure to talk to it is ModelConnectionLost."""

    def __init__(self, connection: Any, websocket: ModelWebSocket, model: str) -> None:
        self._connection = connection   # the SDK's: control events
        self._websocket = websocket     # the same socket: the per-frame path
        self.model = model
        self.closed = False

    @classmethod
    async def connect(cls, client: openai.AsyncOpenAI, settings: Settings, *, instructions: str,
                      tools: list[dict[str, Any]], timeout: float = CONNECT_TIMEOUT_SECONDS) -> RealtimeSession:
        """Open the WebSocket and configure the session (`session.update`)."""
        model = settings.openai_realtime_model
        where = settings.openai_base_url or "api.openai.com"
        sockets: list[ModelWebSocket] = []

        def make_socket(*args: Any, **kwargs: Any) -> ModelWebSocket:
            sockets.append(ModelWebSocket(*args, **kwargs))
            return sockets[-1]

        # `create_connection` is websockets' public hook; the SDK passes these options through to it.
        options: Any = {"create_connection": make_socket}
        try:
            connection = await asyncio.wait_for(
                client.realtime.connect(model=model, websocket_connection_options=options).enter(), timeout)
        except TimeoutError:
            raise ModelConnectionLost(f"realtime model {model!r} at {where} did not accept a connection within "
                                      f"{timeout:g} s (check OPENAI_BASE_URL)") from None
        except Exception as exc:
            raise ModelConnectionLost(f"cannot connect to realtime model {model!r} at {where}: {exc} "
                                      f"(check OPENAI_BASE_URL / OPENAI_API_KEY / OPENAI_REALTIME_MODEL)") from exc
        if not sockets:   # an SDK that no longer passes the options on: say so instead of failing per frame
            await connection.close()
            raise ModelConnectionLost("the openai SDK did not use websockets' create_connection option "
                                      f"(openai {openai.__version__}); see setup.cfg for the tested range")
        session = cls(connection, sockets[-1], model)
        config: Any = session_config(settings, instructions, tools)   # the GA shape, checked by the tests' fake
        await session._guard(connection.session.update(session=config))
        return session

    async def _guard(self, sending: Any) -> None:
        try:
            await sending
        except (ConnectionClosed, openai.OpenAIError, OSError) as exc:
            raise ModelConnectionLost(f"realtime model connection lost: {exc}") from exc

    def listen(self, on_message: OnMessage, on_lost: OnLost) -> None:
        """Hand every server event (raw JSON bytes, in order) to `on_message`, and the loss of the connection to
        `on_lost`, on the event loop's own callbacks."""
        self._websocket.deliver_to(on_message, on_lost)

    def append_now(self, slin8: bytes) -> None:
        """Send 8 kHz slin from the callee, as mu-law (`input_audio_buffer.append`), without waiting."""
        try:
            self._websocket.send_now(_APPEND_HEAD + base64.b64encode(audioop.lin2ulaw(slin8, 2)) + _APPEND_TAIL)
        except (ConnectionClosed, OSError) as exc:
            raise ModelConnectionLost(f"realtime model connection lost: {exc}") from exc

    async def create_response(self, instructions: str | None = None) -> None:
        """Ask the model to speak now (the greeting; a goodbye), optionally with one-off instructions."""
        if instructions:
            await self._guard(self._connection.response.create(response={"instructions": instructions}))
        else:
            await self._guard(self._connection.response.create())

    async def cancel_response(self) -> None:
        await self._guard(self._connection.response.cancel())

    async def truncate(self, item_id: str, audio_end_ms: int, content_index: int = 0) -> None:
        """Tell the model the callee heard only the first `audio_end_ms` of its item (barge-in)."""
        await self._guard(self._connection.conversation.item.truncate(
            item_id=item_id, content_index=content_index, audio_end_ms=max(0, int(audio_end_ms))))

    async def function_output(self, call_id: str, output: dict[str, Any], *, respond: bool = True) -> None:
        """Return a tool's result to the model and (by default) let it respond to it."""
        await self._guard(self._connection.conversation.item.create(item={
            "type": "function_call_output", "call_id": call_id, "output": json.dumps(output)}))
        if respond:
            await self.create_response()

    async def close(self) -> None:
        """Close the WebSocket (idempotent, bounded in time)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await asyncio.wait_for(self._connection.close(), CLOSE_TIMEOUT_SECONDS)
