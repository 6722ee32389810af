"""The AudioSocket wire, checked against the bytes a real Asterisk 22 sent (tests/captures)."""

from __future__ import annotations

import asyncio
import itertools
import re

import pytest

from audiosocket.pacing import FRAME_BYTES, SILENCE_FRAME, OutboundPacer
from audiosocket.protocol import (
    HANGUP_FRAME,
    Frame,
    FrameReader,
    Kind,
    ProtocolError,
    encode_audio,
    encode_dtmf,
    encode_uuid,
)
from tests.doubles.captures import CAPTURES
from tests.doubles.virtual_time import VirtualTimeLoop

CAPTURE = CAPTURES / "audiosocket-session.txt"
LINE = re.compile(r"\s*([\d.]+) kind=0x([0-9a-f]{2}) len=(\d+) head=([0-9a-f]+)")


def captured_frames():
    frames = []
    for line in CAPTURE.read_text().splitlines():
        match = LINE.match(line)
        if match:
            _, kind, length, head = match.groups()
            frames.append((int(kind, 16), int(length), bytes.fromhex(head)))
    return frames


def test_capture_frames_decode_and_our_encoders_match_them_byte_for_byte():
    frames = captured_frames()
    assert len(frames) > 40
    uuid_head = frames[0][2]
    assert encode_uuid("40325ec2-5efd-4bd3-805f-53576e581d13") == uuid_head
    assert [encode_dtmf(d) for d in "12#"] == [head for kind, _, head in frames[1:4]]
    stream = b""
    for _kind, length, head in frames:
        stream += head + bytes(3 + length - len(head))   # the capture keeps the first bytes; pad the rest
    decoded = FrameReader().feed(stream)
    assert decoded[0] == Frame(Kind.UUID, uuid_head[3:])
    assert decoded[0].uuid() == "40325ec2-5efd-4bd3-805f-53576e581d13"
    assert [f.digit() for f in decoded[1:4]] == ["1", "2", "#"]
    assert all(f.kind is Kind.SLIN8 and len(f.payload) == 320 for f in decoded[4:])
    assert HANGUP_FRAME == bytes.fromhex("000000")   # "sent hangup 000000"


def test_reader_is_incremental_byte_by_byte():
    stream = encode_uuid("40325ec2-5efd-4bd3-805f-53576e581d13") + encode_dtmf("5") + encode_audio(b"\x01\x02" * 160)
    reader = FrameReader()
    frames = []
    for byte in stream:
        frames += reader.feed(bytes([byte]))
    assert [f.kind for f in frames] == [Kind.UUID, Kind.DTMF, Kind.SLIN8]
    assert reader.pending == 0
    reader.finish()   # clean end: no error


@pytest.mark.parametrize("raw, message", [
    (b"\x42\x00\x01x", "unknown AudioSocket frame kind 0x42 at byte 0"),
    (b"\x10\xea\x60", "claims 60000 bytes; the limit is 8192"),
    (b"\x01\x00\x04abcd", "UUID frame at byte 0 has 4 bytes; expected 16"),
    (b"\x03\x00\x02ab", "DTMF frame at byte 0 has 2 bytes"),
    (b"\x10\x00\x03abc", "odd length"),
])
def test_malformed_frames_are_clear_errors(raw, message):
    with pytest.raises(ProtocolError, match=re.escape(message)):
        FrameReader().feed(raw)


def test_truncated_frame_at_eof_is_an_error_not_silently_dropped():
    reader = FrameReader()
    assert reader.feed(encode_dtmf("1") + b"\x10\x01\x40" + bytes(100)) == [Frame(Kind.DTMF, b"1")]
    with pytest.raises(ProtocolError, match="got 100 of 320 payload bytes"):
        reader.finish()
    header_only = FrameReader()
    header_only.feed(b"\x10")
    with pytest.raises(ProtocolError, match="inside a frame header"):
        header_only.finish()


def test_only_hangup_and_non_empty_audio_can_be_encoded_for_asterisk():
    with pytest.raises(ValueError, match="empty audio"):
        encode_audio(b"")
    with pytest.raises(ValueError, match="not an audio kind"):
        encode_audio(b"1", Kind.DTMF)
    assert encode_audio(b"\0\0", Kind.SLIN16)[:3] == b"\x12\x00\x02"


def run_in_virtual_time(scenario):
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(scenario(loop))
    finally:
        loop.close()


def test_pacer_writes_silence_then_queued_audio_on_the_grid_and_clears_at_once():
    """On the loop's clock (virtual here, so the times are exact whatever the machine's load)."""
    async def scenario(loop):
        written: list[tuple[float, bytes]] = []
        pacer = OutboundPacer(lambda data: written.append((loop.time(), data)), prebuffer_frames=2)
        pacer.start()
        await asyncio.sleep(0.1)
        pacer.enqueue(b"\x11\x11" * 800, "item_1")   # 100 ms, more than the jitter buffer
        await asyncio.sleep(0.2)
        pacer.enqueue(b"\x22\x22" * 1600, "item_2")  # 200 ms
        await asyncio.sleep(0.05)
        dropped = pacer.clear()
        cleared_at = loop.time()
        await asyncio.sleep(0.06)
        pacer.stop()
        count = len(written)
        await asyncio.sleep(0.05)
        assert len(written) == count, "a frame went out after stop()"
        return pacer, written, dropped, cleared_at

    pacer, written, dropped, cleared_at = run_in_virtual_time(scenario)
    assert all(len(data) == 3 + FRAME_BYTES and data[:3] == b"\x10\x01\x40" for _, data in written)
    assert written[0][1] == SILENCE_FRAME
    assert sum(data[3:] == b"\x11\x11" * 160 for _, data in written) == 5
    assert pacer.played_ms("item_1") == 100
    assert 0 < pacer.played_ms("item_2") < 200 and dropped > 0
    assert all(data == SILENCE_FRAME for at, data in written if at > cleared_at)
    start = written[0][0]
    for index, (at, _) in enumerate(written):   # absolute grid (within its 1 ms phase): no drift, no bursts
        assert -1e-9 <= at - (start + index * 0.020) <= 0.001 + 1e-9


def test_a_silent_model_still_gets_a_frame_out_every_20ms():
    """Asterisk's AudioSocket() hangs up after 2 s without a frame: with nothing queued the pacer writes silence,
    one frame per 20 ms slot."""
    async def scenario(loop):
        written: list[float] = []
        pacer = OutboundPacer(lambda data: written.append(loop.time()) if data == SILENCE_FRAME else None)
        pacer.start()
        await asyncio.sleep(2.5)
        pacer.stop()
        return written

    written = run_in_virtual_time(scenario)
    assert len(written) == 126   # the first at once, then one per 20 ms for 2.5 s
    gaps = [b - a for a, b in itertools.pairwise(written)]
    assert max(gaps) <= 0.021 + 1e-9 and min(gaps) >= 0.019 - 1e-9


def test_after_a_stalled_loop_the_pacer_skips_the_missed_slots_and_never_bursts():
    async def scenario(loop):
        written: list[float] = []
        pacer = OutboundPacer(lambda data: written.append(loop.time()))
        pacer.enqueue(b"\x11\x11" * 8000, "item")   # 1 s of audio queued
        pacer.start()
        await asyncio.sleep(0.1)
        loop.call_soon(loop.stall, 0.25)   # a callback that blocked the loop for 250 ms
        await asyncio.sleep(0)
        await asyncio.sleep(0.2)
        pacer.stop()
        return written

    written = run_in_virtual_time(scenario)
    gaps = [b - a for a, b in itertools.pairwise(written)]
    assert max(gaps) >= 0.25 - 1e-9 and len(written) > 12   # the stall shows as one gap ...
    assert min(gaps) >= 0.010 - 1e-9            # ... and no frames pile up after it (at least half a slot apart)


def test_a_read_of_exactly_one_slin_frame_decodes_as_feed_does():
    frame = encode_audio(bytes(range(256)) + bytes(64))
    fast, slow = FrameReader(), FrameReader()
    assert fast.one_slin8_frame(frame) == slow.feed(frame)[0].payload
    assert fast.offset == slow.offset == len(frame)
    # Anything else is left to feed(): two frames, half a frame, another kind, bytes still pending.
    assert fast.one_slin8_frame(frame + frame) is None
    assert fast.one_slin8_frame(frame[:100]) is None
    assert fast.one_slin8_frame(encode_audio(bytes(640), Kind.SLIN16)) is None
    assert fast.feed(frame[:10]) == []
    assert fast.one_slin8_frame(frame) is None
