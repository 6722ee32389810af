"""The AudioSocket wire: a frame is a kind byte, a 2-byte big-endian payload length, then the payload.

Only bytes live here, nothing about calls. What a real Asterisk 22 sends and accepts is in
../shared/asterisk/README.md: the first frame is the UUID, then DTMF and 20 ms slin audio; from us it accepts
only hangup and non-empty audio (anything else, including a zero-length audio frame, drops the call), which is
why `encode_audio` refuses empty payloads and there is no encoder for the other kinds.
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass

HEADER = struct.Struct(">BH")
HEADER_SIZE = HEADER.size
# 20 ms at the highest rate Asterisk 22 knows (192 kHz, 16-bit) is 7680 bytes; anything far beyond that is
# not a frame but a desynchronised stream or a hostile peer, and must not make us buffer up to 64 KiB each.
DEFAULT_MAX_PAYLOAD = 8192


class Kind(enum.IntEnum):
    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    SLIN8 = 0x10
    SLIN12 = 0x11
    SLIN16 = 0x12
    SLIN24 = 0x13
    SLIN32 = 0x14
    SLIN44 = 0x15
    SLIN48 = 0x16
    SLIN96 = 0x17
    SLIN192 = 0x18
    ERROR = 0xFF


SAMPLE_RATES: dict[Kind, int] = {
    Kind.SLIN8: 8000, Kind.SLIN12: 12000, Kind.SLIN16: 16000, Kind.SLIN24: 24000, Kind.SLIN32: 32000,
    Kind.SLIN44: 44100, Kind.SLIN48: 48000, Kind.SLIN96: 96000, Kind.SLIN192: 192000,
}
AUDIO_KINDS = frozenset(SAMPLE_RATES)
_KINDS = {kind.value: kind for kind in Kind}

HANGUP_FRAME = HEADER.pack(Kind.HANGUP, 0)   # b"\x00\x00\x00", as in audiosocket-session.txt
_SLIN8_HEADER = HEADER.pack(Kind.SLIN8, 320)   # 20 ms of 8 kHz 16-bit mono: what Asterisk sends 50 times a second
_SLIN8_FRAME_SIZE = HEADER_SIZE + 320


class ProtocolError(ValueError):
    """The peer sent something that is not an AudioSocket frame; the message says what and where."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    payload: bytes = b""

    @property
    def is_audio(self) -> bool:
        return self.kind in AUDIO_KINDS

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATES[self.kind]

    def uuid(self) -> str:
        """The call UUID of a 0x01 frame, as text with dashes (how calls.audiosocket_uuid stores it)."""
        return str(uuid.UUID(bytes=self.payload))

    def digit(self) -> str:
        """The ASCII digit of a 0x03 DTMF frame."""
        return self.payload.decode("ascii", errors="replace")


def encode_audio(payload: bytes, kind: Kind = Kind.SLIN8) -> bytes:
    """An audio frame for Asterisk. Empty audio is refused: Asterisk drops the call on a zero-length frame."""
    if kind not in AUDIO_KINDS:
        raise ValueError(f"{kind!r} is not an audio kind; Asterisk accepts only hangup and audio from us")
    if not payload:
        raise ValueError("refusing to send an empty audio frame (Asterisk would drop the call)")
    if len(payload) > 0xFFFF:
        raise ValueError(f"audio payload of {len(payload)} bytes does not fit a frame (max 65535)")
    return HEADER.pack(kind, len(payload)) + payload


def encode_uuid(value: str | uuid.UUID) -> bytes:
    """A 0x01 UUID frame (what Asterisk sends first; used by test clients)."""
    raw = (value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))).bytes
    return HEADER.pack(Kind.UUID, len(raw)) + raw


def encode_dtmf(digit: str) -> bytes:
    """A 0x03 DTMF frame (Asterisk -> server only; used by test clients)."""
    raw = digit.encode("ascii")
    if len(raw) != 1:
        raise ValueError(f"a DTMF frame carries exactly one digit, not {digit!r}")
    return HEADER.pack(Kind.DTMF, 1) + raw


class FrameReader:
    """Incremental decoder: feed it whatever the socket gave, get back the complete frames.

    Raises ProtocolError on an unknown kind, a length over `max_payload`, or a payload that is malformed for
    its kind (a UUID that is not 16 bytes, DTMF that is not one byte, odd-length audio). `finish()` at EOF
    raises if a frame was cut off, so a truncated frame is an error and never silently dropped.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buffer = bytearray()
        self.offset = 0   # bytes consumed so far: error messages say where in the stream it went wrong

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)

    def one_slin8_frame(self, data: bytes) -> bytes | None:
        """The payload when `data` is exactly one 20 ms slin 8 kHz frame and nothing is pending: what nearly every
        read brings, decoded without building a Frame. None otherwise (then `feed` it)."""
        if len(data) == _SLIN8_FRAME_SIZE and data.startswith(_SLIN8_HEADER) and not self._buffer:
            self.offset += _SLIN8_FRAME_SIZE
            return data[HEADER_SIZE:]
        return None

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        buffer = self._buffer
        start = 0
        size = len(buffer)
        while size - start >= HEADER_SIZE:
            raw_kind, length = HEADER.unpack_from(buffer, start)
            kind = _KINDS.get(raw_kind)
            if kind is None:
                raise ProtocolError(f"unknown AudioSocket frame kind 0x{raw_kind:02x} at byte {self.offset}")
            if length > self.max_payload:
                raise ProtocolError(f"AudioSocket frame kind 0x{raw_kind:02x} at byte {self.offset} claims "
                                    f"{length} bytes; the limit is {self.max_payload}")
            end = start + HEADER_SIZE + length
            if end > size:
                break
            payload = bytes(buffer[start + HEADER_SIZE:end])
            _check_payload(kind, payload, self.offset)
            frames.append(Frame(kind, payload))
            self.offset += end - start
            start = end
        if start:
            del buffer[:start]
        return frames

    def finish(self) -> None:
        """Call at EOF: raises ProtocolError if the stream ended inside a frame."""
        if not self._buffer:
            return
        if len(self._buffer) < HEADER_SIZE:
            raise ProtocolError(f"connection closed inside a frame header ({len(self._buffer)} of "
                                f"{HEADER_SIZE} bytes) at byte {self.offset}")
        _, length = HEADER.unpack_from(self._buffer, 0)
        raise ProtocolError(f"connection closed inside a frame at byte {self.offset}: got "
                            f"{len(self._buffer) - HEADER_SIZE} of {length} payload bytes")


def _check_payload(kind: Kind, payload: bytes, offset: int) -> None:
    if kind is Kind.UUID and len(payload) != 16:
        raise ProtocolError(f"UUID frame at byte {offset} has {len(payload)} bytes; expected 16")
    if kind is Kind.DTMF and len(payload) != 1:
        raise ProtocolError(f"DTMF frame at byte {offset} has {len(payload)} bytes; expected 1")
    if kind in AUDIO_KINDS and len(payload) % 2:
        raise ProtocolError(f"audio frame at byte {offset} has an odd length ({len(payload)}); "
                            f"16-bit samples come in pairs of bytes")
