"""A fake OpenAI Realtime WebSocket server (GA event shapes) that the real `openai` SDK connects to.

The SDK opens `ws://<base_url>/realtime?model=...`; this server answers there, records every client event and
speaks back the server events the bridge handles. Tests script it per call:

    fake = FakeRealtime()                      # echo=True: every input_audio_buffer.append comes back as audio
    base_url = await fake.start()              # http://127.0.0.1:PORT/v1 -> OPENAI_BASE_URL
    fake.greeting = FakeResponse(audio=mulaw, transcript="Hello, I am an AI assistant ...")
    conn = await fake.wait_for_connection()    # the call's session
    await conn.wait_for("input_audio_buffer.append")
    await conn.speak(FakeResponse(audio=..., function_call=("end_call", {...})))
    await conn.send({"type": "input_audio_buffer.speech_started", ...})
    await conn.drop()                          # the model connection dies
    await fake.stop()

Per-session scripts (several calls at once): `fake.script = fn(conn, index) -> FakeResponse | None` answers the
index-th response.create of that session (0 = the greeting) before `greeting` / `responses` are consulted.
`serve_session(websocket, path)` runs one session on any socket with `send(text)` and `async for` (FakeOpenAI
uses it to serve the realtime API from its own Starlette app).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve


@dataclass
class FakeResponse:
    """One scripted model response: audio (mu-law bytes) streamed as deltas, its transcript, a function call."""

    audio: bytes = b""
    transcript: str = ""
    function_call: tuple[str, dict[str, Any]] | None = None
    chunk_bytes: int = 800          # mu-law bytes per delta (100 ms); the real API streams faster than realtime
    chunk_interval: float = 0.0     # seconds between deltas
    callee_reply: str = ""          # what the callee then says, as the API's input transcription reports it
    usage: dict[str, Any] | None = None   # response.done's usage; None = counted like the real API (below)


def text_tokens(text: str) -> int:
    """About what OpenAI's tokenizer gives for English text: one token per 4 characters."""
    return max(1, -(-len(text) // 4)) if text else 0


# The real API's audio token rates (developers.openai.com, "Realtime API costs"): input audio 1 token per 100 ms,
# output audio 1 token per 50 ms; G.711 mu-law is 8,000 bytes a second.
def input_audio_tokens(mulaw_bytes: int) -> int:
    return -(-mulaw_bytes // 800)


def output_audio_tokens(mulaw_bytes: int) -> int:
    return -(-mulaw_bytes // 400)


class FakeRealtimeConnection:
    """One client's session on the fake server."""

    def __init__(self, server: FakeRealtime, websocket: ServerConnection, model: str) -> None:
        self.server = server
        self.websocket = websocket
        self.model = model
        self.received: list[dict[str, Any]] = []
        self.audio_in = bytearray()            # every appended mu-law byte, in order
        self.append_times: list[tuple[float, int]] = []   # (wall clock, offset in audio_in) of each append
        self.append_count = 0
        self.closed = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._ids = itertools.count(1)
        self._speaking: asyncio.Task | None = None
        self.response_active = False
        self.current_item: str | None = None
        self.greeting_pending = True
        self.responses_created = 0             # response.create events answered so far
        self.usage_sent: list[dict[str, Any]] = []   # every usage object this session reported, in order
        self._context_text = 0                 # tokens of the conversation so far (the next Response's input)
        self._context_audio = 0
        self._audio_in_counted = 0             # appended bytes already in the conversation
        self._cached = (0, 0)                  # (text, audio) tokens the server has cached: the last input

    def events(self, type_: str) -> list[dict[str, Any]]:
        return [event for event in self.received if event.get("type") == type_]

    def session_config(self) -> dict[str, Any]:
        updates = self.events("session.update")
        return updates[-1]["session"] if updates else {}

    async def wait_for(self, type_: str, timeout: float = 5.0, count: int = 1) -> dict[str, Any]:
        """Wait until `count` client events of this type have arrived; return the last one."""
        async def _ready() -> dict[str, Any]:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.events(type_)) >= count)
                return self.events(type_)[count - 1]
        return await asyncio.wait_for(_ready(), timeout)

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}"

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", self.next_id("event"))
        with contextlib.suppress(Exception):
            await self.websocket.send(json.dumps(event))

    async def drop(self) -> None:
        """The model side goes away without a goodbye (network loss, server crash)."""
        transport = getattr(self.websocket, "transport", None)
        if transport is not None:
            transport.abort()

    def speak(self, response: FakeResponse) -> asyncio.Task:
        """Stream a response (audio deltas, transcript, optional function call) like the real API."""
        self._speaking = asyncio.create_task(self._stream(response))
        return self._speaking

    async def _stream(self, response: FakeResponse) -> None:
        response_id = self.next_id("resp")
        item_id = self.next_id("item")
        self.current_item = item_id
        self.response_active = True
        await self.send({"type": "response.created", "response": {"id": response_id, "status": "in_progress"}})
        try:
            common = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
            for start in range(0, len(response.audio), response.chunk_bytes):
                chunk = response.audio[start:start + response.chunk_bytes]
                await self.send({"type": "response.output_audio.delta", **common,
                                 "delta": base64.b64encode(chunk).decode("ascii")})
                if response.chunk_interval:
                    await asyncio.sleep(response.chunk_interval)
            if response.audio:
                await self.send({"type": "response.output_audio.done", **common})
            if response.transcript:
                await self.send({"type": "response.output_audio_transcript.done", **common,
                                 "transcript": response.transcript})
            if response.callee_reply:
                await self.send({"type": "conversation.item.input_audio_transcription.completed",
                                 "item_id": self.next_id("item"), "content_index": 0,
                                 "transcript": response.callee_reply,
                                 "usage": self.transcription_usage(response.callee_reply)})
            output: list[dict[str, Any]] = []
            if response.function_call:
                name, arguments = response.function_call
                call_item = self.next_id("item")
                call_id = self.next_id("call")
                await self.send({"type": "response.function_call_arguments.done", "response_id": response_id,
                                 "item_id": call_item, "output_index": 1, "call_id": call_id, "name": name,
                                 "arguments": json.dumps(arguments)})
                output.append({"type": "function_call", "id": call_item, "call_id": call_id, "name": name,
                               "arguments": json.dumps(arguments), "status": "completed"})
            await self.send({"type": "response.done", "response": {
                "id": response_id, "status": "completed", "output": output,
                "usage": self._usage(response, response.audio, response.transcript)}})
        except asyncio.CancelledError:
            # A cancelled Response is billed too: for what it generated until then.
            await self.send({"type": "response.done", "response": {
                "id": response_id, "status": "cancelled", "usage": self._usage(response, b"", "")}})
            raise
        finally:
            self.response_active = False

    def _usage(self, response: FakeResponse, audio: bytes, transcript: str) -> dict[str, Any]:
        """response.done's usage as the real API counts it: the whole conversation so far is the input (the
        instructions, what the callee said, the AI's earlier answers), the part the previous Response already
        read is cached, and the output is this Response's audio and transcript text."""
        if response.usage is not None:
            self.usage_sent.append(response.usage)
            return response.usage
        if not self._context_text:
            instructions = self.session_config().get("instructions", "")
            tools = json.dumps(self.session_config().get("tools", []))
            self._context_text = text_tokens(instructions) + text_tokens(tools)
        self._context_audio += input_audio_tokens(len(self.audio_in) - self._audio_in_counted)
        self._audio_in_counted = len(self.audio_in)
        text_in, audio_in = self._context_text, self._context_audio
        cached_text, cached_audio = (min(self._cached[0], text_in) // 64 * 64, min(self._cached[1], audio_in))
        text_out, audio_out = text_tokens(transcript), output_audio_tokens(len(audio))
        usage = {"total_tokens": text_in + audio_in + text_out + audio_out,
                 "input_tokens": text_in + audio_in, "output_tokens": text_out + audio_out,
                 "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in, "image_tokens": 0,
                                         "cached_tokens": cached_text + cached_audio,
                                         "cached_tokens_details": {"text_tokens": cached_text,
                                                                   "audio_tokens": cached_audio,
                                                                   "image_tokens": 0}},
                 "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out}}
        self._cached = (text_in, audio_in)
        self._context_text += text_out          # the answer becomes input of the next Response
        self._context_audio += audio_out
        self.usage_sent.append(usage)
        return usage

    def transcription_usage(self, transcript: str, seconds: float = 1.0) -> dict[str, Any]:
        """A token-billed transcription's usage (gpt-4o-mini-transcribe), as the API reports it."""
        audio = input_audio_tokens(int(seconds * 8000))
        usage = {"type": "tokens", "input_tokens": audio, "output_tokens": text_tokens(transcript),
                 "total_tokens": audio + text_tokens(transcript),
                 "input_token_details": {"text_tokens": 0, "audio_tokens": audio}}
        self.usage_sent.append(usage)
        return usage

    async def _on_event(self, event: dict[str, Any]) -> None:
        type_ = event.get("type")
        if type_ == "input_audio_buffer.append":
            audio = base64.b64decode(event.get("audio", ""))
            self.append_count += 1
            self.append_times.append((time.time(), len(self.audio_in)))
            if self.server.echo:
                # Echo model for the benchmark: each appended chunk comes straight back as output audio.
                await self.send({"type": "response.output_audio.delta", "response_id": "resp_echo",
                                 "item_id": "item_echo", "output_index": 0, "content_index": 0,
                                 "delta": event.get("audio", "")})
                return
            self.audio_in += audio
        elif type_ == "session.update":
            await self.send({"type": "session.updated", "session": event.get("session", {})})
        elif type_ == "response.create":
            script = self.server.next_response(self)
            if script is not None:
                self.speak(script)
        elif type_ == "response.cancel":
            if self._speaking is not None and not self._speaking.done():
                self._speaking.cancel()
        elif type_ == "conversation.item.truncate":
            await self.send({"type": "conversation.item.truncated", "item_id": event.get("item_id"),
                             "content_index": event.get("content_index", 0),
                             "audio_end_ms": event.get("audio_end_ms")})
        elif type_ == "conversation.item.create":
            item = event.get("item", {})
            await self.send({"type": "conversation.item.created", "item": {"id": self.next_id("item"), **item}})

    async def stop_speaking(self) -> None:
        if self._speaking is not None and not self._speaking.done():
            self._speaking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._speaking


class FakeRealtime:
    def __init__(self, *, echo: bool = False) -> None:
        self.echo = echo
        self.connections: list[FakeRealtimeConnection] = []
        self.greeting: FakeResponse | None = None          # answers the first response.create of a session
        self.responses: list[FakeResponse] = []             # then these, FIFO, for later response.create
        self.refuse_connections = False
        self.script: Callable[[FakeRealtimeConnection, int], FakeResponse | None] | None = None
        self._connected = asyncio.Condition()
        self._server: Any = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> str:
        self._server = await serve(self._handle, "127.0.0.1", 0, max_size=None, compression=None,
                                   process_request=self._check_path)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.base_url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    def _check_path(self, connection: ServerConnection, request: Any) -> Any:
        if urlsplit(request.path).path != "/v1/realtime" or self.refuse_connections:
            return connection.respond(404 if not self.refuse_connections else 503, "no realtime here\n")
        return None

    def next_response(self, conn: FakeRealtimeConnection) -> FakeResponse | None:
        index = conn.responses_created
        conn.responses_created += 1
        if self.script is not None:
            conn.greeting_pending = False
            return self.script(conn, index)
        if conn.greeting_pending:
            conn.greeting_pending = False
            return self.greeting
        return self.responses.pop(0) if self.responses else None

    async def wait_for_connection(self, index: int = 0, timeout: float = 5.0) -> FakeRealtimeConnection:
        async def _ready() -> FakeRealtimeConnection:
            async with self._connected:
                await self._connected.wait_for(lambda: len(self.connections) > index)
                return self.connections[index]
        return await asyncio.wait_for(_ready(), timeout)

    async def _handle(self, websocket: ServerConnection) -> None:
        await self.serve_session(websocket, websocket.request.path)

    async def serve_session(self, websocket: Any, path: str) -> None:
        """One client session: `websocket` needs `await send(text)`, `async for message in websocket` and a
        `transport` attribute (None: drop() cannot cut it)."""
        query = parse_qs(urlsplit(path).query)
        conn = FakeRealtimeConnection(self, websocket, query.get("model", [""])[0])
        async with self._connected:
            self.connections.append(conn)
            self._connected.notify_all()
        await conn.send({"type": "session.created", "session": {"type": "realtime", "model": conn.model}})
        try:
            async for message in websocket:
                event = json.loads(message)
                if event.get("type") != "input_audio_buffer.append" or not self.echo:
                    async with conn._arrived:
                        conn.received.append(event)
                        conn._arrived.notify_all()
                await conn._on_event(event)
        except Exception:
            pass
        finally:
            await conn.stop_speaking()
            conn.closed.set()
