"""Fuzzing the AudioSocket wire (audiosocket/protocol.py's FrameReader and the server around it).

The frame reader turns any byte stream, cut anywhere, into the same frames or raises ProtocolError (its one
documented error), never buffers more than one frame, and decides at EOF without waiting. At the socket level,
no input kills the server: the next connection is still read, looked up and answered.
"""

from __future__ import annotations

import asyncio
import uuid

from hypothesis import given
from hypothesis import strategies as st

from audiosocket.protocol import (
    AUDIO_KINDS,
    HEADER,
    HEADER_SIZE,
    Frame,
    FrameReader,
    Kind,
    ProtocolError,
    encode_audio,
    encode_dtmf,
    encode_uuid,
)
from db.engine import create_engine, session_factory
from db.migrate import upgrade
from tests.doubles.audiosocket_calls import audiosocket_server, make_runtime, seed_call
from tests.doubles.audiosocket_client import AsteriskAudioSocket, speech_like
from tests.doubles.fake_realtime import FakeRealtime
from tests.doubles.reliability_fuzz import FUZZ, FUZZ_SOCKETS, chunked, cuts, run_bounded

SMALL_MAX = 512   # a small max_payload so that the fuzzer reaches the limit with bounded inputs

# ---------------------------------------------------------------- strategies: what could arrive

valid_frame = st.one_of(
    st.uuids().map(encode_uuid),
    st.sampled_from("0123456789*#ABCD").map(encode_dtmf),
    st.tuples(st.sampled_from(sorted(AUDIO_KINDS)), st.integers(1, SMALL_MAX // 2))
    .map(lambda kl: encode_audio(bytes(range(256)) * (kl[1] * 2 // 256) + bytes(kl[1] * 2 % 256), kl[0])),
    st.just(HEADER.pack(Kind.HANGUP, 0)),
    st.binary(max_size=32).map(lambda b: HEADER.pack(Kind.ERROR, len(b)) + b),
)
# Frames whose header lies: any kind byte, any length, any payload size.
raw_frame = st.builds(lambda kind, length, payload: HEADER.pack(kind, length) + payload,
                      st.integers(0, 255), st.integers(0, 0xFFFF), st.binary(max_size=64))
stream = st.one_of(
    st.binary(max_size=2048),
    st.lists(st.one_of(valid_frame, raw_frame, st.binary(max_size=8)), max_size=12).map(b"".join),
)


def _decode(reader: FrameReader, pieces: list[bytes]) -> tuple[list[Frame], str | None]:
    """Frames decoded until the first error, and that error's kind (None: the stream ended cleanly)."""
    frames: list[Frame] = []
    try:
        for piece in pieces:
            frames += reader.feed(piece)
            assert reader.pending < HEADER_SIZE + reader.max_payload   # never more than one frame buffered
        reader.finish()
    except ProtocolError as exc:
        return frames, str(exc)
    return frames, None


# ---------------------------------------------------------------- the frame reader


@FUZZ
@given(stream, cuts)
def test_any_stream_in_any_chunking_gives_the_same_frames_or_a_protocol_error(data, cut_at):
    whole, whole_error = _decode(FrameReader(SMALL_MAX), [data])
    pieces, pieces_error = _decode(FrameReader(SMALL_MAX), chunked(data, cut_at))
    assert (whole_error is None) == (pieces_error is None), (whole_error, pieces_error)
    if whole_error is None:
        assert pieces == whole
    else:   # a feed() that raises returns nothing of its chunk: the frames seen agree up to the shorter list
        shorter = min(len(pieces), len(whole))
        assert pieces[:shorter] == whole[:shorter]
    for frame in whole:                      # what the bridge calls on each kind works on every decoded frame
        if frame.kind is Kind.UUID:
            uuid.UUID(frame.uuid())
        elif frame.kind is Kind.DTMF:
            assert len(frame.digit()) == 1
        elif frame.is_audio:
            assert frame.sample_rate >= 8000 and len(frame.payload) % 2 == 0


@FUZZ
@given(st.lists(valid_frame, max_size=20), cuts)
def test_frames_asterisk_could_send_come_back_exactly(frames, cut_at):
    data = b"".join(frames)
    decoded, error = _decode(FrameReader(SMALL_MAX), chunked(data, cut_at))
    assert error is None
    assert [HEADER.pack(f.kind, len(f.payload)) + f.payload for f in decoded] == frames


@FUZZ
@given(st.integers(0, 255), st.integers(SMALL_MAX + 1, 0xFFFF))
def test_an_oversized_length_is_refused_from_the_header_alone(kind, length):
    """No waiting for (and no buffering of) a payload that could never be accepted."""
    reader = FrameReader(SMALL_MAX)
    try:
        reader.feed(HEADER.pack(kind, length))
    except ProtocolError:
        return
    raise AssertionError(f"kind 0x{kind:02x} with {length} bytes was not refused")


@FUZZ
@given(stream)
def test_the_server_side_read_loop_ends_at_eof_without_a_hang(data):
    """The loop the server and the bridge run (read, feed, finish at EOF) always ends on a closed stream."""
    async def read_all() -> int:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        frames = FrameReader(SMALL_MAX)
        count = 0
        try:
            while chunk := await reader.read(97):
                count += len(frames.feed(chunk))
            frames.finish()
        except ProtocolError:
            pass
        return count

    with asyncio.Runner() as runner:
        assert run_bounded(runner, read_all(), timeout=2.0) <= len(data) // HEADER_SIZE


# ---------------------------------------------------------------- the server on a real socket


async def _refused_at_once(port: int) -> None:
    """A well-formed connection for a call that does not exist: the server must read the UUID, look it up
    and answer with a hangup frame - which needs it alive and reading."""
    client = AsteriskAudioSocket(port, str(uuid.uuid4()))
    await client.connect()
    try:
        await client.wait_hangup(timeout=2)
        await client.wait_eof(timeout=2)
    finally:
        await client.close()
    assert [(f.kind, f.payload) for f in client.received] == [(0x00, b"")]


def test_random_bytes_never_kill_the_audiosocket_server(tmp_path):
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'fuzz.db'}"
    env = {"DATABASE_URL": database_url, "SECRET_KEY": "test-secret", "RETRY_JITTER": "0"}
    with asyncio.Runner() as runner:
        runner.run(upgrade(database_url))
        engine = create_engine(database_url)
        sessions = session_factory(engine)
        realtime = FakeRealtime()
        runner.run(realtime.start())
        runtime = make_runtime(env, engine, sessions, realtime.base_url)
        server_cm = audiosocket_server(runtime, uuid_timeout=0.3)
        server = runner.run(server_cm.__aenter__())
        held_open: list[asyncio.StreamWriter] = []

        async def attack_then_call(data: bytes, ending: str) -> None:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(data)
            await writer.drain()
            if ending == "close":
                writer.close()
            else:   # silent: the UUID timeout, or the refusal, has to end it
                held_open.append(writer)
            await _refused_at_once(server.port)

        @FUZZ_SOCKETS
        @given(st.one_of(stream, st.tuples(st.uuids().map(encode_uuid), stream).map(b"".join)),
               st.sampled_from(["close", "silent"]))
        def attack(data, ending):
            refused = server.refused
            run_bounded(runner, attack_then_call(data, ending))
            assert server.refused >= refused + 1

        try:
            attack()

            async def real_call_still_works() -> None:
                # After all that, a real call is bridged to the model and hears it, frame by frame.
                seeded = await seed_call(sessions)
                client = AsteriskAudioSocket(server.port, seeded.as_uuid)
                await client.connect()
                client.play(speech_like(0.3), keep_sending=True)
                await realtime.wait_for_connection(0)
                await client.wait_frames(10, timeout=3)
                await client.close()
                while server.bridges or server._handlers:   # every connection, good or bad, was closed
                    await asyncio.sleep(0.02)
            run_bounded(runner, real_call_still_works(), timeout=8.0)
            assert not server.bridges and len(realtime.connections) == 1
        finally:
            for writer in held_open:
                writer.close()
            runner.run(server_cm.__aexit__(None, None, None))
            runner.run(realtime.stop())
            runner.run(engine.dispose())
