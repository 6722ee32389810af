"""The realtime model's WebSocket on the per-frame path: whole messages handed to a callback, appends written now.

The `openai` SDK opens the connection (URL, auth, handshake) and sends the session's control events
(`session.update`, `response.create`, tools); it builds the socket with `websockets`' public `create_connection`
hook, which is where this subclass comes in. What it changes is only the per-frame path, where the measurements
of issue 17 showed the cost: a task and a future per received message (the SDK's `recv`), and a coroutine, the
send machinery and a random-number syscall per sent message.

- Received data messages go straight from the socket's `data_received` to `on_message(bytes)`, in order, on the
  event loop's own callback: no queue, no task, no future. Messages that arrive before a receiver is attached
  (`session.created` right after the handshake) are kept and handed over first. Control frames (ping, pong,
  close) stay with `websockets`, which answers pings and runs the closing handshake as before.
- `send_now(text)` writes one complete, masked text frame to the transport synchronously. A complete frame
  never interleaves with the frames `websockets` writes for the SDK's control events, because every write is a
  whole frame. Masking keys come from `os.urandom`, 4 KiB at a time (one syscall per 1,024 frames), as RFC 6455
  requires a strong source for them.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosedError
from websockets.frames import Frame, Opcode
from websockets.protocol import State

try:   # websockets' C helper (what it uses itself); the pure-Python one where it was not built
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

MASK_POOL_BYTES = 4096
# Unsent bytes at which a model that stopped reading counts as lost (about 45 s of appends): `send_now` never
# waits, so without this a stuck connection would buffer the callee's audio without bound.
MAX_UNSENT_BYTES = 1 << 20
_TEXT_FIN = 0x81
_MASKED = 0x80
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")

OnMessage = Callable[[bytes], None]
OnLost = Callable[[BaseException | None], None]


class ModelWebSocket(ClientConnection):
    """`websockets`' client connection with a message callback and a synchronous send (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_message: OnMessage | None = None
        self._on_lost: OnLost | None = None
        self._early: list[bytes] = []
        self._fragments: list[bytes] | None = None
        self._lost: tuple[BaseException | None] | None = None
        self._masks = b""
        self._mask_at = MASK_POOL_BYTES

    def deliver_to(self, on_message: OnMessage, on_lost: OnLost) -> None:
        """From now on every data message goes to `on_message` (the ones that came earlier first), and the loss of
        the connection to `on_lost` (at once if it is already gone)."""
        self._on_message, self._on_lost = on_message, on_lost
        early, self._early = self._early, []
        for message in early:
            on_message(message)
        if self._lost is not None:
            on_lost(self._lost[0])

    @property
    def open(self) -> bool:
        return self.protocol.state is State.OPEN and self._lost is None

    def send_now(self, text: bytes) -> None:
        """Write one text message (UTF-8 bytes) as a single masked frame; raises ConnectionClosed once closing."""
        transport = self.transport
        if self.protocol.state is not State.OPEN or transport.is_closing():
            raise ConnectionClosedError(None, None)
        if transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            raise OSError(f"the model has not read the last {MAX_UNSENT_BYTES >> 20} MiB we sent")
        at = self._mask_at
        if at >= MASK_POOL_BYTES:
            self._masks, at = os.urandom(MASK_POOL_BYTES), 0
        mask = self._masks[at:at + 4]
        self._mask_at = at + 4
        size = len(text)
        if size < 126:
            header = _SHORT.pack(_TEXT_FIN, _MASKED | size)
        elif size < 65536:
            header = _MEDIUM.pack(_TEXT_FIN, _MASKED | 126, size)
        else:
            header = _LONG.pack(_TEXT_FIN, _MASKED | 127, size)
        transport.write(header + mask + apply_mask(text, mask))

    # ------------------------------------------------------------------ websockets' hooks

    def process_event(self, event: Any) -> None:
        if self.response is None or not isinstance(event, Frame):
            super().process_event(event)   # the handshake response
            return
        opcode = event.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if event.fin:
                self._deliver(bytes(event.data))
            else:
                self._fragments = [bytes(event.data)]
        elif opcode is Opcode.CONT:
            if self._fragments is not None:
                self._fragments.append(bytes(event.data))
                if event.fin:
                    message, self._fragments = b"".join(self._fragments), None
                    self._deliver(message)
        else:
            super().process_event(event)   # ping / pong / close: websockets' own handling

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._lost is None:
            self._lost = (exc,)
            if self._on_lost is not None:
                self._on_lost(exc)

    def _deliver(self, message: bytes) -> None:
        if self._on_message is not None:
            self._on_message(message)
        else:
            self._early.append(message)
