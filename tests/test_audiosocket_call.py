"""Calls through the real wire: an Asterisk-like AudioSocket client, our server and bridge, and the real
`openai` SDK talking to a fake Realtime WebSocket server."""

from __future__ import annotations

import asyncio
import itertools
import time
import warnings

from db import repo
from db.models import CallOutcome, Speaker
from tests.doubles.audiosocket_calls import asterisk_call, audiosocket_server, seed_call
from tests.doubles.audiosocket_client import speech_like, tone
from tests.doubles.fake_realtime import FakeResponse

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


def mulaw(slin: bytes) -> bytes:
    return audioop.lin2ulaw(slin, 2)


def slin_of(mu: bytes) -> bytes:
    return audioop.ulaw2lin(mu, 2)


async def call_events(sessions, seeded, type_=None):
    async with sessions() as db:
        events = await repo.list_call_events(db, seeded.user_id, seeded.call_id)
    return [e for e in events if type_ is None or e.type == type_]


async def wait_event(sessions, seeded, type_, timeout=5.0):
    async def _poll():
        while True:
            found = await call_events(sessions, seeded, type_)
            if found:
                return found
            await asyncio.sleep(0.05)
    return await asyncio.wait_for(_poll(), timeout)


async def test_audio_flows_both_ways_in_20ms_frames(scene, sessions, realtime):
    greeting = tone(1.0, 440)
    realtime.greeting = FakeResponse(audio=mulaw(greeting), transcript="Hello, this is an AI assistant.")
    seeded = await seed_call(sessions)
    runtime = scene(REALTIME_VAD_THRESHOLD="0.7", OPENAI_REALTIME_VOICE="cedar",
                    OPENAI_TRANSCRIBE_MODEL="whisper-1")
    speech = speech_like(1.5, seed=3)
    before_call = time.monotonic()
    async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
        model = await realtime.wait_for_connection()
        asterisk.play(speech)
        await model.wait_for("response.create")
        await asterisk.wait_frames(100, timeout=5)
        await asyncio.sleep(1.6)   # let the callee's 1.5 s of speech reach the model

    # Session: G.711 mu-law both ways (no resampling), voice and VAD from settings, our tools.
    config = model.session_config()
    assert config["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert config["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert config["audio"]["output"]["voice"] == "cedar"
    assert config["audio"]["input"]["transcription"] == {"model": "whisper-1"}
    assert config["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert config["audio"]["input"]["turn_detection"]["threshold"] == 0.7
    # No transfer targets listed by the user: no transfer tool (tests/security/ shows it with targets).
    assert {t["name"] for t in config["tools"]} == {"send_dtmf", "end_call", "request_user_feedback",
                                                    "record_note"}
    assert "AI assistant calling on behalf of Alice Example" in config["instructions"]
    assert "call after 10 am" in config["instructions"]
    assert model.model == "gpt-realtime"

    # Caller -> model: the callee's audio arrives in order, as mu-law of exactly what Asterisk sent.
    heard = bytes(model.audio_in)
    assert len(heard) >= 8000   # at least 1 s of the 1.5 s
    assert heard in mulaw(speech + bytes(16000 * 4)), "model audio is not a contiguous piece of the caller's"
    # Each append carried audio: the model's buffer grew with every one (marks: its size before each append).
    marks = [size for _, size in model.append_times] + [len(model.audio_in)]
    assert model.append_count == len(model.append_times) > 0
    assert all(after > before for before, after in itertools.pairwise(marks)), "an append without audio"

    # Model -> caller: only 320-byte slin frames, the greeting exactly. Their timing (a 20 ms grid, no bursts, no
    # drift) is the pacer's, shown on a virtual clock in test_audiosocket_protocol.py and measured under load by
    # bench/bench_audiosocket.py: wall-clock gaps here would test the machine's load.
    frames = asterisk.audio_frames()
    assert {(f.kind, len(f.payload)) for f in asterisk.received} <= {(0x10, 320), (0x00, 0)}
    played = asterisk.received_audio()
    assert slin_of(mulaw(greeting)) in played
    # Agent transcript saved with its offset: from the call's start to its first audible frame, which reached the
    # callee no earlier (the call started after `before_call`).
    async with sessions() as db:
        lines = await repo.list_transcript(db, seeded.user_id, seeded.call_id)
    assert [(line.speaker, line.text) for line in lines] == [(Speaker.AGENT, "Hello, this is an AI assistant.")]
    first_heard = next(f.at for f in frames if not f.silent)
    assert 0 <= lines[0].offset_ms <= (first_heard - before_call) * 1000


async def test_a_silent_model_still_sends_silence_frames(scene, sessions, realtime):
    """Over the wire: silence keeps flowing while the model says nothing (one per 20 ms slot: the pacer's test)."""
    seeded = await seed_call(sessions)
    runtime = scene()
    async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
        await realtime.wait_for_connection()
        await asterisk.wait_frames(125, timeout=30)   # 2.5 s of frames: longer than AudioSocket()'s 2 s rule
        frames = asterisk.audio_frames()
    assert all(f.silent and len(f.payload) == 320 for f in frames)


async def test_callee_speech_and_agent_speech_are_transcribed_with_offsets(scene, sessions, realtime):
    seeded = await seed_call(sessions)
    runtime = scene()
    async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid):
        model = await realtime.wait_for_connection()
        await model.wait_for("response.create")
        await model.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": 1234, "item_id": "in_1"})
        await model.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 2000, "item_id": "in_1"})
        await model.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": "in_1",
                          "content_index": 0, "transcript": "Yes, speaking.",
                          "usage": {"type": "duration", "seconds": 1}})
        await model.speak(FakeResponse(audio=mulaw(tone(0.2)), transcript="Great, thank you."))
        await model.send({"type": "error", "error": {"type": "invalid_request_error", "message": "boom"}})
        await asyncio.sleep(0.5)
    async with sessions() as db:
        lines = await repo.list_transcript(db, seeded.user_id, seeded.call_id)
    assert (Speaker.CALLEE, "Yes, speaking.", 1234) in [(x.speaker, x.text, x.offset_ms) for x in lines]
    assert (Speaker.AGENT, "Great, thank you.") in [(x.speaker, x.text) for x in lines]
    errors = await call_events(sessions, seeded, "ai.error")
    assert errors[0].payload["error"]["message"] == "boom"


async def test_barge_in_drops_queued_audio_within_one_frame(scene, sessions, realtime):
    # A 4 s answer streams at twice realtime (as the real API sends faster than realtime): audio is queued
    # ahead of the clock while the response is still in progress.
    realtime.greeting = FakeResponse(audio=mulaw(tone(4.0, 300)), transcript="A long answer", chunk_interval=0.05)
    seeded = await seed_call(sessions)
    runtime = scene()
    async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
        model = await realtime.wait_for_connection()
        await model.wait_for("response.create")
        await asyncio.sleep(0.5)   # the callee hears half a second of it
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        await model.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": 700, "item_id": "in_1"})
        truncate = await model.wait_for("conversation.item.truncate", timeout=2)
        # Late audio of the interrupted item must not be played either.
        await model.send({"type": "response.output_audio.delta", "item_id": truncate["item_id"],
                          "response_id": "r", "output_index": 0, "content_index": 0,
                          "delta": __import__("base64").b64encode(mulaw(tone(0.5, 300))).decode()})
        await asyncio.sleep(0.6)
    frames = asterisk.audio_frames()
    loud = [f for f in frames if not f.silent]
    # asyncio loop time and time.monotonic() are the same clock on Linux.
    after = [f for f in loud if f.at > sent_at + 0.020 + 0.005]
    assert not after, f"{len(after)} audio frames still played after barge-in"
    heard_ms = len(loud) * 20
    assert 350 <= heard_ms <= 800
    assert truncate["content_index"] == 0
    assert abs(truncate["audio_end_ms"] - heard_ms) <= 20
    assert model.events("response.cancel"), "the answer in progress was not cancelled"
    barge = await wait_event(sessions, seeded, "ai.barge_in")
    assert barge[0].payload["dropped_ms"] >= 200


async def test_callee_dtmf_is_recorded_and_never_echoed(scene, sessions, realtime):
    seeded = await seed_call(sessions)
    runtime = scene()
    async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
        await realtime.wait_for_connection()
        for digit in "12#":
            await asterisk.send_dtmf(digit)
        events = await wait_event(sessions, seeded, "callee.dtmf")
        while len(events) < 3:
            events = await wait_event(sessions, seeded, "callee.dtmf")
            await asyncio.sleep(0.05)
    assert [e.payload["digit"] for e in events] == ["1", "2", "#"]
    assert {f.kind for f in asterisk.received} <= {0x10, 0x00}


async def test_model_connection_drop_hangs_up_within_2s_as_failed_ai(scene, sessions, realtime):
    seeded = await seed_call(sessions)
    runtime = scene()
    async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
        model = await realtime.wait_for_connection()
        await model.wait_for("response.create")
        loop = asyncio.get_running_loop()
        dropped_at = loop.time()
        await model.drop()
        await asterisk.wait_hangup(timeout=3)
        assert loop.time() - dropped_at < 2.0
        assert asterisk.received[-1].kind == 0x00 and asterisk.received[-1].payload == b""
    failed = await wait_event(sessions, seeded, "ai.failed")
    assert failed[0].payload["reason"] == "model_lost"
    async with sessions() as db:
        call = await repo.get_call(db, seeded.user_id, seeded.call_id)
    assert call.outcome is CallOutcome.FAILED_AI
    assert call.bridged_to_ai is True


async def test_unreachable_model_hangs_up_politely_and_keeps_frames_going_meanwhile(scene, sessions, realtime):
    realtime.refuse_connections = True
    seeded = await seed_call(sessions)
    runtime = scene()
    async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
        await asterisk.wait_hangup(timeout=3)
    assert asterisk.received[-1].kind == 0x00
    assert all(f.kind == 0x10 for f in asterisk.received[:-1])
    failed = await wait_event(sessions, seeded, "ai.failed")
    assert "cannot connect to realtime model" in failed[0].payload["detail"]


async def test_max_call_duration_says_goodbye_and_hangs_up(scene, sessions, realtime):
    realtime.responses = [FakeResponse(audio=mulaw(tone(0.3)), transcript="Goodbye!")]
    seeded = await seed_call(sessions)
    runtime = scene(MAX_CALL_SECONDS="1")
    async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
        model = await realtime.wait_for_connection()
        await asterisk.wait_hangup(timeout=4)
    goodbye = model.events("response.create")[-1]
    assert "goodbye" in goodbye["response"]["instructions"].lower()
    assert slin_of(mulaw(tone(0.3))) in asterisk.received_audio()
    ended = await wait_event(sessions, seeded, "audiosocket.ended")
    assert ended[0].payload["reason"] == "max_duration"


async def test_silence_timeout_ends_the_call(scene, sessions, realtime):
    seeded = await seed_call(sessions)
    runtime = scene(SILENCE_TIMEOUT_SECONDS="1")
    async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
        await realtime.wait_for_connection()
        await asterisk.wait_hangup(timeout=4)
    ended = await wait_event(sessions, seeded, "audiosocket.ended")
    assert ended[0].payload["reason"] == "silence_timeout"


async def test_what_the_callee_says_while_the_model_connects_reaches_it_in_order(scene, sessions, realtime):
    """The callee's 'Hello?' right after the answer, before the model session is ready: held, then sent
    first, byte for byte, before anything said later."""
    seeded = await seed_call(sessions)
    runtime = scene()
    hello, later = speech_like(0.6, seed=11), speech_like(0.4, seed=12)
    async with audiosocket_server(runtime) as server:
        real_connect = server.connect_model

        async def slow_model(instructions, tools):   # a model session that takes 0.5 s to be ready
            await asyncio.sleep(0.5)
            return await real_connect(instructions, tools)
        server.connect_model = slow_model
        async with asterisk_call(server, seeded.as_uuid) as asterisk:
            asterisk.play(hello + later, keep_sending=False)
            model = await realtime.wait_for_connection(timeout=5)
            await asyncio.sleep(1.5)
    expected = mulaw(hello + later)
    assert bytes(model.audio_in[:len(expected)]) == expected
    (connected,) = await wait_event(sessions, seeded, "ai.connected")
    assert connected.payload["early_audio_ms"] >= 400


async def test_two_frames_per_append_carry_the_same_audio_in_half_the_messages(scene, sessions, realtime):
    seeded = await seed_call(sessions)
    runtime = scene(AUDIOSOCKET_FRAMES_PER_APPEND="2")
    speech = speech_like(1.0, seed=5)
    async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
        model = await realtime.wait_for_connection()
        await model.wait_for("response.create")
        asterisk.play(speech, keep_sending=False)
        await model.wait_for("input_audio_buffer.append", count=25, timeout=5)
        await asyncio.sleep(0.2)
    sizes = [len(e["audio"]) for e in model.events("input_audio_buffer.append")]
    assert sizes.count(len(__import__("base64").b64encode(bytes(320)))) >= 24, sizes   # 2 x 160 mu-law bytes
    assert bytes(model.audio_in) == mulaw(speech)   # nothing lost, nothing reordered, the odd last frame too


async def test_metrics_follow_a_call(scene, sessions, realtime):
    from opendeep.metrics import (
        AUDIOSOCKET_LIVE_CALLS,
        FRAME_LATENESS,
        MODEL_CONNECT_SECONDS,
        MODEL_FIRST_AUDIO_SECONDS,
    )

    def count(histogram):
        return next(s.value for m in histogram.collect() for s in m.samples if s.name.endswith("_count"))

    realtime.greeting = FakeResponse(audio=mulaw(tone(0.2)), transcript="Hello.")
    seeded = await seed_call(sessions)
    before = (count(FRAME_LATENESS), count(MODEL_CONNECT_SECONDS), count(MODEL_FIRST_AUDIO_SECONDS))
    live_before = AUDIOSOCKET_LIVE_CALLS._value.get()
    async with audiosocket_server(scene()) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
        await realtime.wait_for_connection()
        await asterisk.wait_frames(30)
        assert AUDIOSOCKET_LIVE_CALLS._value.get() == live_before + 1
        assert any(not f.silent for f in asterisk.audio_frames())
    assert AUDIOSOCKET_LIVE_CALLS._value.get() == live_before
    assert count(FRAME_LATENESS) > before[0]
    assert count(MODEL_CONNECT_SECONDS) == before[1] + 1
    assert count(MODEL_FIRST_AUDIO_SECONDS) == before[2] + 1
