"""The fake OpenAI server speaks what the real SDK expects (tool calls, errors, timeouts)."""

import json

import openai
import pytest

from tests.doubles.fake_openai import FakeOpenAI


async def test_sdk_receives_queued_tool_call_then_text_and_errors_when_nothing_is_queued():
    fake = FakeOpenAI()
    base_url = await fake.start()
    try:
        client = openai.AsyncOpenAI(api_key="k", base_url=base_url, max_retries=0, timeout=5)
        fake.queue_reply(tool_calls=[{"name": "lookup", "arguments": {"q": "dentist"}}])
        fake.queue_reply(content="done")
        first = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        call = first.choices[0].message.tool_calls[0]
        assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"q": "dentist"}
        second = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "go"}])
        assert second.choices[0].message.content == "done"
        assert [r["messages"][0]["content"] for r in fake.requests] == ["hi", "go"]
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "?"}])
        fake.queue_reply(content="late", delay=1.0)
        slow = openai.AsyncOpenAI(api_key="k", base_url=base_url, max_retries=0, timeout=0.2)
        with pytest.raises(openai.APITimeoutError):
            await slow.chat.completions.create(model="m", messages=[{"role": "user", "content": "slow"}])
    finally:
        await fake.stop()


async def test_the_realtime_websocket_is_served_from_the_same_base_url():
    from tests.doubles.fake_realtime import FakeResponse

    fake = FakeOpenAI()
    base_url = await fake.start()
    fake.realtime.greeting = FakeResponse(audio=b"\xff" * 1600, transcript="Hello there.")
    try:
        client = openai.AsyncOpenAI(api_key="k", base_url=base_url, max_retries=0, timeout=5)
        async with client.realtime.connect(model="gpt-realtime") as connection:
            await connection.response.create()
            types = []
            while not types or types[-1] != "response.done":
                types.append(json.loads(await connection.recv_bytes())["type"])
        session = await fake.realtime.wait_for_connection(timeout=5)
        assert session.model == "gpt-realtime" and session.events("response.create")
        assert types[0] == "session.created" and types.count("response.output_audio.delta") == 2
        assert "response.output_audio_transcript.done" in types
    finally:
        await fake.stop()
