"""A live call is wrapped up politely when its campaign's goal was met on another call (audiosocket/wrap_up.py),
through the real wire: an Asterisk-like AudioSocket client, our server and bridge, and the real `openai` SDK
talking to the fake Realtime server. The signal here comes the way another process gives it: a `goal.wrap_up`
call event in the database (no event hub)."""

from __future__ import annotations

import asyncio

from sqlalchemy import update

from audiosocket import wrap_up
from db import repo
from db.models import Campaign, CampaignGoal, Task
from tests.doubles.audiosocket_calls import asterisk_call, audiosocket_server, seed_call
from tests.doubles.fake_realtime import FakeResponse
from tests.test_audiosocket_call import wait_event

THANKS = "Thank you, but we no longer need the appointment. Goodbye!"


async def _until_one_succeeds(sessions, seeded) -> None:
    async with sessions() as db, db.begin():
        campaign_id = (await db.get(Task, seeded.task_id)).campaign_id
        await db.execute(update(Campaign).where(Campaign.id == campaign_id)
                         .values(goal_type=CampaignGoal.UNTIL_ONE_SUCCEEDS))


async def _goal_met_elsewhere(sessions, seeded) -> None:
    async with sessions() as db, db.begin():
        await repo.record_call_event(db, seeded.user_id, seeded.call_id, "goal.wrap_up",
                                     {"reason": "the goal was met with Dentist B"})


def _asked_to_wrap_up(conn) -> bool:
    return any(wrap_up.WRAP_UP_PROMPT == (e.get("response") or {}).get("instructions")
               for e in conn.events("response.create"))


async def test_the_call_ai_is_told_to_withdraw_and_ends_the_call_itself(scene, sessions, realtime, monkeypatch):
    monkeypatch.setattr(wrap_up, "POLL_SECONDS", 0.1)
    seeded = await seed_call(sessions)
    await _until_one_succeeds(sessions, seeded)

    def script(conn, index):
        if index == 0:
            return FakeResponse(transcript="Hello, I am calling to book a check-up.")
        if _asked_to_wrap_up(conn):
            return FakeResponse(transcript=THANKS, function_call=(
                "end_call", {"outcome": "objective_not_met", "summary": "Withdrawn: booked elsewhere."}))
        return None
    realtime.script = script
    runtime = scene()
    async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
        model = await realtime.wait_for_connection()
        await model.wait_for("response.create")
        await _goal_met_elsewhere(sessions, seeded)
        (ended,) = await wait_event(sessions, seeded, "audiosocket.ended", timeout=10)

    assert ended.payload["reason"] == "ai_ended"
    assert _asked_to_wrap_up(model)
    assert asterisk.received[-1].kind == 0x00   # our hangup frame, after the AI's goodbye
    types = [e.type for e in await repo_events(sessions, seeded)]
    assert types.index("goal.wrap_up") < types.index("ai.wrap_up") < types.index("ai.end_call")
    async with sessions() as db:
        lines = await repo.list_transcript(db, seeded.user_id, seeded.call_id)
    assert lines[-1].text == THANKS


async def test_an_ai_that_does_not_end_the_call_is_ended_with_a_goodbye_after_the_grace(scene, sessions, realtime,
                                                                                         monkeypatch):
    monkeypatch.setattr(wrap_up, "POLL_SECONDS", 0.1)
    monkeypatch.setattr(wrap_up, "GRACE_SECONDS", 0.5)
    seeded = await seed_call(sessions)
    await _until_one_succeeds(sessions, seeded)
    realtime.script = lambda conn, index: FakeResponse(transcript="Hello." if index == 0 else "Hmm, let me see.")
    runtime = scene()
    async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid):
        model = await realtime.wait_for_connection()
        await model.wait_for("response.create")
        await _goal_met_elsewhere(sessions, seeded)
        (ended,) = await wait_event(sessions, seeded, "audiosocket.ended", timeout=10)
    assert ended.payload["reason"] == "goal_met"
    prompts = [(e.get("response") or {}).get("instructions") for e in model.events("response.create")]
    assert wrap_up.WRAP_UP_PROMPT in prompts and prompts[-1].startswith("The call has to end now")


async def test_a_call_of_an_each_target_campaign_is_not_watched(scene, sessions, realtime, monkeypatch):
    monkeypatch.setattr(wrap_up, "POLL_SECONDS", 0.1)
    seeded = await seed_call(sessions)   # each_target: the default
    realtime.script = lambda conn, index: FakeResponse(transcript="Hello.") if index == 0 else None
    runtime = scene()
    async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid):
        model = await realtime.wait_for_connection()
        await model.wait_for("response.create")
        await _goal_met_elsewhere(sessions, seeded)
        await asyncio.sleep(0.5)
        assert not _asked_to_wrap_up(model)


async def repo_events(sessions, seeded):
    async with sessions() as db:
        return await repo.list_call_events(db, seeded.user_id, seeded.call_id)
