"""A test client that behaves like Asterisk 22's AudioSocket() application, byte for byte.

From tests/captures/audiosocket-session.txt and smoke-logs/*.as.log: it sends the 0x01 UUID frame (16 raw
bytes) at once, DTMF as 0x03 frames of one ASCII byte, audio as 0x10 frames of 320 bytes (20 ms slin 8 kHz,
little-endian samples) on a steady 20 ms clock; on the server's `00 00 00` it closes the socket at once.
It records every frame the server sends with its arrival time, so tests can check framing and pacing.

    client = AsteriskAudioSocket(port, as_uuid)
    await client.connect()
    client.play(speech_like(2.0))        # 20 ms frames from this audio, then silence
    await client.send_dtmf("1")
    await client.wait_hangup(timeout=3)
    await client.close()                 # EOF, as when the callee hangs up
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import socket
import struct
import time
import uuid
import warnings
from dataclasses import dataclass

with warnings.catch_warnings():  # stdlib audioop: deprecated in 3.11, present until 3.13 (audioop-lts after)
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FRAME_BYTES = 320
FRAME_SECONDS = 0.020
SILENCE = bytes(FRAME_BYTES)


def speech_like(seconds: float, seed: int = 1, rate: int = 8000) -> bytes:
    """Deterministic speech-like slin: voiced 'syllables' (a gliding pitch with harmonics and an envelope),
    noisy consonant bursts and short pauses. Pure Python, no numpy."""
    rng = random.Random(seed)
    samples: list[int] = []
    total = int(seconds * rate)
    while len(samples) < total:
        kind = rng.random()
        length = int(rate * rng.uniform(0.08, 0.25))
        if kind < 0.6:      # voiced syllable
            f0 = rng.uniform(110, 220)
            glide = rng.uniform(-0.3, 0.3)
            for n in range(length):
                t = n / rate
                envelope = math.sin(math.pi * n / length)
                f = f0 * (1 + glide * n / length)
                value = sum(math.sin(2 * math.pi * f * h * t) / h for h in (1, 2, 3, 4))
                samples.append(int(9000 * envelope * value / 2))
        elif kind < 0.8:    # consonant: a noise burst
            samples.extend(int(rng.gauss(0, 2500)) for _ in range(length // 3))
        else:               # pause
            samples.extend(0 for _ in range(length // 2))
    clipped = [max(-32768, min(32767, s)) for s in samples[:total]]
    return struct.pack(f"<{len(clipped)}h", *clipped)


def mulaw(slin: bytes) -> bytes:
    """slin 8 kHz -> G.711 mu-law, as the realtime model sends and receives audio/pcmu."""
    return audioop.lin2ulaw(slin, 2)


def tone(seconds: float, frequency: float = 440.0, amplitude: int = 8000, rate: int = 8000) -> bytes:
    count = int(seconds * rate)
    return struct.pack(f"<{count}h", *(int(amplitude * math.sin(2 * math.pi * frequency * n / rate))
                                        for n in range(count)))


@dataclass(frozen=True)
class ReceivedFrame:
    at: float          # time.monotonic() when it arrived
    kind: int
    payload: bytes

    @property
    def silent(self) -> bool:
        return not any(self.payload)


class AsteriskAudioSocket:
    def __init__(self, port: int, call_uuid: str, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.call_uuid = call_uuid
        self.received: list[ReceivedFrame] = []
        self.eof = asyncio.Event()
        self.hangup = asyncio.Event()
        self.sent_audio_frames = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task | None = None
        self._play_task: asyncio.Task | None = None
        self._audio = bytearray()

    async def connect(self, *, send_uuid: bool = True) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        if send_uuid:
            self.write(b"\x01\x00\x10" + uuid.UUID(self.call_uuid).bytes)
        self._read_task = asyncio.create_task(self._read())

    def write(self, data: bytes) -> None:
        """Raw bytes onto the socket (tests of malformed input use this directly)."""
        assert self._writer is not None
        self._writer.write(data)

    def play(self, audio: bytes = b"", *, keep_sending: bool = True) -> None:
        """Send `audio` as 20 ms frames on an absolute clock, then silence while `keep_sending` (as a live
        channel does)."""
        self._audio += audio
        if self._play_task is None:
            self._play_task = asyncio.create_task(self._play(keep_sending))

    async def _play(self, keep_sending: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while not self.eof.is_set():
            if self._audio:
                chunk = bytes(self._audio[:FRAME_BYTES]).ljust(FRAME_BYTES, b"\0")
                del self._audio[:FRAME_BYTES]
            elif keep_sending:
                chunk = SILENCE
            else:
                return
            try:
                self.write(b"\x10\x01\x40" + chunk)
            except Exception:
                return
            self.sent_audio_frames += 1
            deadline += FRAME_SECONDS
            await asyncio.sleep(max(0.0, deadline - loop.time()))

    async def send_dtmf(self, digit: str) -> None:
        self.write(b"\x03\x00\x01" + digit.encode("ascii"))

    async def _read(self) -> None:
        assert self._reader is not None
        try:
            while True:
                header = await self._reader.readexactly(3)
                length = int.from_bytes(header[1:], "big")
                payload = await self._reader.readexactly(length) if length else b""
                self.received.append(ReceivedFrame(time.monotonic(), header[0], payload))
                if header[0] == 0x00:
                    self.hangup.set()
                    # Asterisk closes the socket within a millisecond of the hangup frame.
                    self._close_writer()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.eof.set()

    def _close_writer(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()

    async def wait_hangup(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self.hangup.wait(), timeout)

    async def wait_eof(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self.eof.wait(), timeout)

    async def wait_frames(self, count: int, timeout: float = 5.0) -> None:
        async def _enough() -> None:
            while len(self.audio_frames()) < count:
                await asyncio.sleep(0.005)
        await asyncio.wait_for(_enough(), timeout)

    def audio_frames(self) -> list[ReceivedFrame]:
        return [frame for frame in self.received if frame.kind == 0x10]

    def received_audio(self) -> bytes:
        return b"".join(frame.payload for frame in self.audio_frames())

    async def close(self, *, reset: bool = False) -> None:
        """Hang up like a callee does: the socket closes (EOF at the server; `reset`: a TCP RST instead, as
        when a socket is closed with data still unread)."""
        if reset and self._writer is not None:
            sock = self._writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for task in (self._play_task,):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._close_writer()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 1)
        if self._read_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._read_task, 2)
