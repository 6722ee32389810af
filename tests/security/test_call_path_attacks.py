"""Attacks on the call path's ports, over the real wire (FastAGI, AudioSocket), on SQLite and PostgreSQL.

Whoever reaches the FastAGI port must not speak for a call: no secret, a wrong secret, an address outside
ASTERISK_ALLOWED_PEERS, or a session on another channel than the one our Originate made for that call are all
refused, and the call stays as it was. An AudioSocket UUID is good for one connection: a second one with a live
call's UUID gets a hangup frame and nothing of the call.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from db import repo
from db.models import Call, CallOutcome, CallStatus, TaskStatus
from opendeep.settings import load_settings
from tests.doubles.agi_client import ENV_H_EXTENSION, FakeAsteriskAgi
from tests.doubles.audiosocket_calls import asterisk_call, audiosocket_server, seed_call
from tests.doubles.audiosocket_client import AsteriskAudioSocket, speech_like
from tests.test_fastagi_routes import _fastagi

NUMBER = "+14155550123"


async def _fastagi_with(engine, sessions, settings_env, **env):
    return await _fastagi(engine, sessions, load_settings({**settings_env, "OPENAI_API_KEY": "sk-test", **env},
                                                          dotenv=None))


@pytest.fixture
async def agi(engine, sessions, settings_env):
    component = await _fastagi_with(engine, sessions, settings_env)
    yield component
    await component.stop()


async def _live_call(sessions, username="alice"):
    """An answered call as the real path leaves it: call-start ran, AMI reported the ;1 half's channel."""
    async with sessions() as db, db.begin():
        user = await repo.create_user(db, username, "x")
        campaign = await repo.create_campaign(db, user.id, name="Dentists")
        task = await repo.add_task(db, user.id, campaign.id, target_name="Dr. Who", phone_number=NUMBER,
                                   max_attempts=3)
        task.status, task.attempt_count = TaskStatus.IN_PROGRESS, 1
        call = Call(user_id=user.id, task_id=task.id, attempt_number=1, dialed_number=NUMBER,
                    status=CallStatus.ANSWERED, audiosocket_uuid=str(uuid.uuid4()))
        db.add(call)
        await db.flush()
        call.channel = f"Local/{NUMBER}@opendeep-outbound-{call.id:08x};1"
        return user.id, task.id, call.id, call.channel


async def _state(sessions, user_id, call_id):
    async with sessions() as db:
        call = await repo.get_call(db, user_id, call_id)
        events = [e.type for e in await repo.list_call_events(db, user_id, call_id)]
        return call.status, call.outcome, call.channel, events


@pytest.mark.parametrize("secret", [None, "", "wrong-secret-0123456789"], ids=["no-secret", "empty", "wrong"])
async def test_a_forged_call_end_without_the_secret_changes_nothing(agi, sessions, secret, caplog):
    user_id, _, call_id, channel = await _live_call(sessions)
    run = await FakeAsteriskAgi(agi.port, script="call-end", args=(str(call_id), str(user_id)),
                                template=ENV_H_EXTENSION, variables={"DIALSTATUS": "BUSY", "HANGUPCAUSE": "17"},
                                dead=True, secret=secret).run()
    assert run.commands == []   # not one command: the session was closed unheard
    assert await _state(sessions, user_id, call_id) == (CallStatus.ANSWERED, None, channel, [])
    assert agi.server.refused_sessions == 1
    assert "refused" in caplog.text and "test-fastagi-secret" not in caplog.text   # the secret is never logged


async def test_with_the_secret_a_call_end_on_another_calls_channel_is_refused(agi, sessions):
    """The secret leaked, or a bug: a call-end naming call B from call A's channel (agi_uniqueid)."""
    user_id, _, call_id, channel = await _live_call(sessions)
    other_user, _, other_call, _ = await _live_call(sessions, username="bob")
    run = await FakeAsteriskAgi(agi.port, script="call-end", args=(str(call_id), str(user_id)),
                                template=ENV_H_EXTENSION, variables={"DIALSTATUS": "BUSY", "HANGUPCAUSE": "17"},
                                overrides={"agi_uniqueid": f"opendeep-{other_call}-b"}, dead=True).run()
    assert run.agi_status == "SUCCESS"   # heard, then ignored: the session is not the call's own ;2 half
    assert await _state(sessions, user_id, call_id) == (CallStatus.ANSWERED, None, channel, [])


async def test_a_forged_call_answered_cannot_replace_the_calls_channel(agi, sessions):
    """`agi_channel: PJSIP/ceo-desk-0000beef` on a session that claims the call: Cancel would hang up the CEO."""
    user_id, _, call_id, channel = await _live_call(sessions)
    forged = await FakeAsteriskAgi(agi.port, script="call-answered", args=(str(call_id), str(user_id)),
                                   overrides={"agi_channel": "PJSIP/ceo-desk-0000beef"}).run()
    assert forged.variables == {}   # no AudioSocket UUID handed out either
    wrong_half = await FakeAsteriskAgi(agi.port, script="call-answered", args=(str(call_id), str(user_id)),
                                       overrides={"agi_channel": channel, "agi_uniqueid": "1732790000.42"}).run()
    assert wrong_half.variables == {}
    assert await _state(sessions, user_id, call_id) == (CallStatus.ANSWERED, None, channel, [])
    genuine = await FakeAsteriskAgi(agi.port, script="call-answered", args=(str(call_id), str(user_id)),
                                    overrides={"agi_channel": channel}).run()
    async with sessions() as db:
        assert genuine.variables["OPENDEEP_AS_UUID"] == (await repo.get_call(db, user_id, call_id)).audiosocket_uuid


async def test_fastagi_refuses_addresses_outside_the_allowed_peers(engine, sessions, settings_env):
    component = await _fastagi_with(engine, sessions, settings_env, ASTERISK_ALLOWED_PEERS="192.0.2.10/32")
    try:
        user_id, _, call_id, channel = await _live_call(sessions)
        run = await FakeAsteriskAgi(component.port, script="call-end", args=(str(call_id), str(user_id)),
                                    template=ENV_H_EXTENSION, variables={"DIALSTATUS": "BUSY"}, dead=True).run()
    finally:
        await component.stop()
    assert run.commands == [] and component.server.refused_sessions == 1
    assert await _state(sessions, user_id, call_id) == (CallStatus.ANSWERED, None, channel, [])


async def test_a_transfer_session_dials_only_what_this_call_was_allowed_once(agi, sessions):
    user_id, _, call_id, channel = await _live_call(sessions)
    nothing = await FakeAsteriskAgi(agi.port, script="transfer", args=(str(call_id), str(user_id)),
                                    overrides={"agi_channel": channel}).run()
    assert nothing.variables == {}   # no transfer was allowed: [opendeep-transfer] dials nothing
    async with sessions() as db, db.begin():
        (await repo.get_call(db, user_id, call_id)).transfer_number = "+14155550106"
    first = await FakeAsteriskAgi(agi.port, script="transfer", args=(str(call_id), str(user_id)),
                                  overrides={"agi_channel": channel}).run()
    again = await FakeAsteriskAgi(agi.port, script="transfer", args=(str(call_id), str(user_id)),
                                  overrides={"agi_channel": channel}).run()
    assert first.variables == {"OPENDEEP_TRANSFER_DIAL": "PJSIP/+14155550106@opendeep-trunk"}
    assert again.variables == {}


async def test_a_transfer_to_a_number_put_on_the_dnd_list_meanwhile_is_refused(agi, sessions):
    user_id, _, call_id, channel = await _live_call(sessions)
    async with sessions() as db, db.begin():
        (await repo.get_call(db, user_id, call_id)).transfer_number = "+14155550106"
        await repo.add_dnd(db, user_id, "+14155550106")
    run = await FakeAsteriskAgi(agi.port, script="transfer", args=(str(call_id), str(user_id)),
                                overrides={"agi_channel": channel}).run()
    assert run.variables == {}
    async with sessions() as db:
        (event,) = [e for e in await repo.list_call_events(db, user_id, call_id) if e.type == "agi.transfer"]
    assert event.payload == {"number": "+14155550106", "refused": "the number is on a do-not-call list"}


async def test_a_second_audiosocket_connection_with_a_live_calls_uuid_gets_nothing(scene, sessions, realtime,
                                                                                     caplog):
    seeded = await seed_call(sessions)
    async with audiosocket_server(scene()) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
        model = await realtime.wait_for_connection()
        asterisk.play(speech_like(1.0))
        intruder = AsteriskAudioSocket(server.port, seeded.as_uuid)
        await intruder.connect()
        await intruder.wait_hangup(timeout=3)
        await intruder.wait_eof(timeout=3)
        await intruder.close()
        await asyncio.sleep(0.3)
        assert not asterisk.hangup.is_set()          # the genuine call goes on
        assert len(server.bridges) == 1
    assert [(f.kind, f.payload) for f in intruder.received] == [(0x00, b"")]   # no audio, no instructions
    assert len(realtime.connections) == 1 and model is realtime.connections[0]
    assert server.refused == 1 and "a UUID is good for one connection" in caplog.text
    async with sessions() as db:
        call = await repo.get_call(db, seeded.user_id, seeded.call_id)
    assert call.audiosocket_claimed_at is not None and call.outcome is not CallOutcome.FAILED_AI
