"""OpenDeep's side of the dialplan contract: the rendered dialplan, run step by step, with its AGI() calls going to
the real FastAGI server over TCP (the fake Asterisk AGI sends the captured environment) -- what the FastAGI answers,
which variables the dialplan then reads, and the decisions that land in the database.

Asterisk's own behaviour (what it does with the Originate, Dial, the Local pair, AudioSocket, AMD) is tested against
a real Asterisk 22 in tests/test_asterisk_calls.py and tests/test_asterisk_faults.py -- including the FastAGI being
down, busy / no answer / congestion and an answering machine; nothing here re-asserts it. `Pbx` only walks the two
Local halves through the shipped file: ;2 [opendeep-outbound], and once the scripted callee answers, ;1 [the
Originate's Context].
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from ami_controller.manager import CONNECTED_CONTEXT, OUTBOUND_CONTEXT, call_uniqueids
from db import repo
from db.models import Call, CallOutcome, CallStatus, TaskStatus
from dialplan.render import EXTENSIONS, render_dialplan
from fastagi_server.server import FastAgiComponent
from opendeep.events import EventHub
from opendeep.runtime import Runtime
from opendeep.settings import load_settings
from tests.doubles import dialplan_interpreter as asterisk
from tests.doubles.agi_client import ENV_ANSWERED, ENV_H_EXTENSION, FakeAsteriskAgi

NUMBER = "+14155550123"
ONE = f"Local/{NUMBER}@{OUTBOUND_CONTEXT}-0000002a;1"
TWO = f"Local/{NUMBER}@{OUTBOUND_CONTEXT}-0000002a;2"


class Pbx:
    """Walks the rendered dialplan's two Local halves: AGI() to a FastAGI port, Dial() of the callee scripted, and
    Dial(AudioSocket/...) recorded (the conversation itself is the AudioSocket tests' business)."""

    def __init__(self, plan, agi_port: int, *, callee: str = "answer", amd_status: str = "HUMAN"):
        self.plan = plan
        self.agi_port = agi_port
        self.callee = callee              # answer / busy / noanswer
        self.amd_status = amd_status
        self.dialed: list[list[str]] = []         # Dial() on ;2: the callee
        self.ai_dialed: list[list[str]] = []      # Dial() on ;1: the AudioSocket channel
        self.variables: dict[str, str] = {}       # the Originate's
        self.connected: asterisk.Channel | None = None

    async def agi(self, channel, args):
        url = urlsplit(args[0])
        script = url.path.lstrip("/") + (f"?{url.query}" if url.query else "")
        dead = channel.variables.get("EXTEN") == "h"
        # The Uniqueids OpenDeep's Originate pre-assigns (ChannelId / OtherChannelId) to the ;1 and ;2 halves.
        one, two = call_uniqueids(int(self.variables["OPENDEEP_CALL_ID"]))
        uniqueid = one if channel.name == ONE else two
        run = await FakeAsteriskAgi(self.agi_port, script=script, args=tuple(args[1:]),
                                    variables=channel.variables, dead=dead,
                                    template=ENV_H_EXTENSION if dead else ENV_ANSWERED,
                                    overrides={"agi_channel": channel.name, "agi_uniqueid": uniqueid},
                                    secret=None).run()   # the dialplan's URL carries the FastAGI secret
        channel.variables.update(run.variables)
        channel.variables["AGISTATUS"] = run.agi_status

    async def dial(self, channel, args):
        self.dialed.append(args)
        if self.callee == "busy":
            channel.variables.update(DIALSTATUS="BUSY", HANGUPCAUSE="17")
            return
        if self.callee == "noanswer":
            channel.variables.update(DIALSTATUS="NOANSWER", HANGUPCAUSE="19")
            return
        # The callee answers: the ;1 half runs the Originate's Context with the Originate's variables.
        self.connected = asterisk.Channel(ONE, dict(self.variables))
        await asterisk.run(self.plan, CONNECTED_CONTEXT, "s", self.connected,
                           {"AGI": self.agi, "Dial": self.dial_ai, "AMD": self.amd, "Playback": self.playback})
        channel.variables.update(DIALSTATUS="ANSWER", HANGUPCAUSE="16", ANSWEREDTIME="12")
        channel.hung_up = True

    async def dial_ai(self, channel, args):
        self.ai_dialed.append(args)
        channel.hung_up = True   # the AI ended the conversation

    async def amd(self, channel, args):
        channel.variables.update(AMDSTATUS=self.amd_status, AMDCAUSE="TOOLONG-5000")

    async def playback(self, channel, args):
        pass

    async def originate(self, call_id: int, user_id: int, task_id: int) -> asterisk.Channel:
        """What AMI's Originate of Local/<number>@opendeep-outbound/n starts on the ;2 half."""
        self.variables = {"OPENDEEP_CALL_ID": str(call_id), "OPENDEEP_USER_ID": str(user_id),
                          "OPENDEEP_TASK_ID": str(task_id), "OPENDEEP_NUMBER": NUMBER}
        channel = asterisk.Channel(TWO, dict(self.variables))
        await asterisk.run(self.plan, OUTBOUND_CONTEXT, NUMBER, channel,
                           {"AGI": self.agi, "Dial": self.dial})
        return channel


def _apps(channel):
    return [app for app, _ in channel.executed]


async def _setup(engine, sessions, settings_env, **extra):
    settings = load_settings({**settings_env, "OPENAI_API_KEY": "sk-test", **extra}, dotenv=None)
    component = FastAgiComponent(Runtime(settings=settings, engine=engine, sessions=sessions, events=EventHub()),
                                 host="127.0.0.1", port=0)
    await component.start()
    rendered = load_settings({**settings_env, "FASTAGI_ADVERTISE": f"127.0.0.1:{component.port}"}, dotenv=None)
    return component, rendered


async def _call(sessions):
    async with sessions() as db, db.begin():
        user = await repo.create_user(db, "alice", "x")
        campaign = await repo.create_campaign(db, user.id, name="Plumbers")
        task = await repo.add_task(db, user.id, campaign.id, target_name="Joe", phone_number=NUMBER)
        task.status = TaskStatus.IN_PROGRESS
        task.attempt_count = 1
        call = Call(user_id=user.id, task_id=task.id, attempt_number=1, dialed_number=NUMBER,
                    status=CallStatus.ORIGINATING)
        db.add(call)
        await db.flush()
        return call.id, user.id, task.id


async def _state(sessions, call_id, user_id, task_id):
    async with sessions() as db:
        return await repo.get_call(db, user_id, call_id), await repo.get_task(db, user_id, task_id)


@pytest.fixture
async def pbx_env(engine, sessions, settings_env):
    component, rendered = await _setup(engine, sessions, settings_env)
    yield component, asterisk.parse(render_dialplan(rendered)[EXTENSIONS]), rendered
    await component.stop()


async def test_the_fastagi_answers_what_each_half_of_an_answered_call_reads(pbx_env, sessions):
    component, plan, _ = pbx_env
    call_id, user_id, task_id = await _call(sessions)
    pbx = Pbx(plan, component.port)
    local = await pbx.originate(call_id, user_id, task_id)

    # call-start on ;2: what Dial() rings and for how long; nothing answers before the callee.
    assert pbx.dialed == [[f"PJSIP/{NUMBER}@opendeep-trunk", "45"]]
    assert _apps(local)[:4] == ["NoOp", "AGI", "GotoIf", "GotoIf"] and "Answer" not in _apps(local)
    # call-answered on ;1: where the AI is (the call's own AudioSocket UUID), the bridge flag and the hard limit.
    call, task = await _state(sessions, call_id, user_id, task_id)
    one = pbx.connected
    assert pbx.ai_dialed == [[f"AudioSocket/127.0.0.1:9092/{call.audiosocket_uuid}/c(slin)"]]
    assert (one.variables["OPENDEEP_BRIDGE"], one.variables["TIMEOUT(absolute)"]) == ("1", "600")
    assert call.channel == ONE   # live-call commands (DTMF, transfer, hangup) target the ;1 half
    # call-end in ;2's h extension finishes the call.
    assert (call.status, call.outcome, call.dial_status) == (CallStatus.ENDED, CallOutcome.ANSWERED, "ANSWER")
    assert task.status_reason == "awaiting analysis"


async def test_call_answered_for_a_call_already_ended_connects_nothing(pbx_env, sessions):
    component, plan, _ = pbx_env
    call_id, user_id, task_id = await _call(sessions)
    async with sessions() as db, db.begin():
        row = await db.get(Call, call_id)
        row.status, row.audiosocket_uuid = CallStatus.ENDED, "8f7c6d1e-0b1a-4c2d-9e3f-112233445566"
    pbx = Pbx(plan, component.port)
    pbx.variables = {"OPENDEEP_CALL_ID": str(call_id), "OPENDEEP_USER_ID": str(user_id)}
    await pbx.dial(asterisk.Channel(TWO, {}), ["PJSIP/x@opendeep-trunk", "45"])   # the callee answered anyway
    assert "OPENDEEP_AS_UUID" not in pbx.connected.variables and pbx.ai_dialed == []
    assert _apps(pbx.connected)[-1] == "Hangup"


async def test_dnd_number_is_never_dialed(pbx_env, sessions):
    component, plan, _ = pbx_env
    call_id, user_id, task_id = await _call(sessions)
    async with sessions() as db, db.begin():
        await repo.add_dnd(db, user_id, NUMBER)
    pbx = Pbx(plan, component.port)
    local = await pbx.originate(call_id, user_id, task_id)
    assert pbx.dialed == [] and ("Verbose", f"1,OpenDeep call {call_id} not dialed: dnd") in local.executed
    call, task = await _state(sessions, call_id, user_id, task_id)
    assert (call.outcome, task.status) == (CallOutcome.DND_BLOCKED, TaskStatus.CANCELLED_DND)


async def test_busy_callee_ends_as_busy_and_is_retried(pbx_env, sessions):
    component, plan, _ = pbx_env
    call_id, user_id, task_id = await _call(sessions)
    pbx = Pbx(plan, component.port, callee="busy")
    await pbx.originate(call_id, user_id, task_id)
    assert pbx.connected is None
    call, task = await _state(sessions, call_id, user_id, task_id)
    assert (call.outcome, call.hangup_cause, task.status) == (CallOutcome.BUSY, 17, TaskStatus.RETRY_SCHEDULED)


@pytest.mark.parametrize(("amd_status", "talks", "outcome"), [
    ("MACHINE", False, CallOutcome.VOICEMAIL),
    ("NOTSURE", True, CallOutcome.ANSWERED),
    ("HUMAN", True, CallOutcome.ANSWERED),
])
async def test_the_amd_route_tells_the_dialplan_whether_to_talk(pbx_env, sessions, amd_status, talks, outcome):
    component, _, rendered = pbx_env
    plan = asterisk.parse(render_dialplan(rendered, amd=True)[EXTENSIONS])
    call_id, user_id, task_id = await _call(sessions)
    pbx = Pbx(plan, component.port, amd_status=amd_status)
    await pbx.originate(call_id, user_id, task_id)
    assert "AMD" in _apps(pbx.connected)
    assert pbx.connected.variables["OPENDEEP_AMD_ACTION"] == ("talk" if talks else "hangup")
    assert bool(pbx.ai_dialed) is talks
    call, _ = await _state(sessions, call_id, user_id, task_id)
    assert call.outcome is outcome


async def test_without_a_realtime_model_the_callee_hears_a_prompt_and_the_call_is_failed_ai(
        engine, sessions, settings_env):
    settings = load_settings(settings_env, dotenv=None)
    component = FastAgiComponent(Runtime(settings=settings, engine=engine, sessions=sessions, events=EventHub()),
                                 host="127.0.0.1", port=0)
    await component.start()
    try:
        rendered = load_settings({**settings_env, "FASTAGI_ADVERTISE": f"127.0.0.1:{component.port}"},
                                 dotenv=None)
        plan = asterisk.parse(render_dialplan(rendered)[EXTENSIONS])
        call_id, user_id, task_id = await _call(sessions)
        pbx = Pbx(plan, component.port)
        await pbx.originate(call_id, user_id, task_id)
    finally:
        await component.stop()
    assert pbx.connected.variables["OPENDEEP_BRIDGE"] == "0"
    assert ("Playback", "vm-goodbye") in pbx.connected.executed and pbx.ai_dialed == []
    call, _ = await _state(sessions, call_id, user_id, task_id)
    assert call.outcome is CallOutcome.FAILED_AI
