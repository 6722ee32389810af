"""The rendered dialplan, run step by step with its AGI() calls going to the real FastAGI server over TCP (the
fake Asterisk AGI sends the captured environment) and the decisions landing in the database: what is dialed,
what never is, and how each call ends."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest

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


class Pbx:
    """Plays Asterisk around the dialplan: AGI() to a FastAGI port, Dial() to a scripted callee."""

    def __init__(self, plan, agi_port: int, *, callee: str = "answer", amd_status: str = "HUMAN"):
        self.plan = plan
        self.agi_port = agi_port
        self.callee = callee              # answer / busy / noanswer
        self.amd_status = amd_status
        self.dialed: list[list[str]] = []
        self.callee_channel: asterisk.Channel | None = None
        self.handlers = {"AGI": self.agi, "Dial": self.dial, "AMD": self.amd}

    async def agi(self, channel, args):
        url = urlsplit(args[0])
        script = url.path.lstrip("/") + (f"?{url.query}" if url.query else "")
        dead = channel.variables.get("EXTEN") == "h"
        run = await FakeAsteriskAgi(self.agi_port, script=script, args=tuple(args[1:]),
                                    variables=channel.variables, dead=dead,
                                    template=ENV_H_EXTENSION if dead else ENV_ANSWERED,
                                    overrides={"agi_channel": channel.name}).run()
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
        option = args[2]
        assert option.startswith("U(") and option.endswith(")")
        context, *gosub_args = option[2:-1].split("^")
        callee = asterisk.Channel("PJSIP/opendeep-trunk-00000007",
                                  {f"ARG{i}": value for i, value in enumerate(gosub_args, start=1)})
        self.callee_channel = callee
        await asterisk.run(self.plan, context, "s", callee, self.handlers)
        assert callee.variables.get("GOSUB_RESULT") == "CONTINUE"  # Dial hangs the callee up, we go on
        channel.variables.update(DIALSTATUS="ANSWER", HANGUPCAUSE="16")

    async def amd(self, channel, args):
        channel.variables.update(AMDSTATUS=self.amd_status, AMDCAUSE="TOOLONG-5000")

    async def originate(self, call_id: int, user_id: int, task_id: int) -> asterisk.Channel:
        """What AMI's Originate of Local/<number>@opendeep-outbound/n starts on the ;2 half."""
        channel = asterisk.Channel("Local/+14155550123@opendeep-outbound-0000002a;2", {
            "OPENDEEP_CALL_ID": str(call_id), "OPENDEEP_USER_ID": str(user_id),
            "OPENDEEP_TASK_ID": str(task_id), "OPENDEEP_NUMBER": NUMBER})
        await asterisk.run(self.plan, "opendeep-outbound", NUMBER, channel, self.handlers)
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


async def test_answered_call_reaches_the_ai_then_ends_awaiting_analysis(pbx_env, sessions):
    component, plan, _ = pbx_env
    call_id, user_id, task_id = await _call(sessions)
    pbx = Pbx(plan, component.port)
    local = await pbx.originate(call_id, user_id, task_id)

    assert pbx.dialed[0][:2] == [f"PJSIP/{NUMBER}@opendeep-trunk", "45"]
    assert _apps(local)[:4] == ["NoOp", "AGI", "GotoIf", "GotoIf"] and "Answer" in _apps(local)
    call, task = await _state(sessions, call_id, user_id, task_id)
    callee = pbx.callee_channel
    assert ("AudioSocket", f"{call.audiosocket_uuid},127.0.0.1:9092") in callee.executed
    assert callee.variables["TIMEOUT(absolute)"] == "600"
    assert call.channel == "PJSIP/opendeep-trunk-00000007"
    assert (call.status, call.outcome, call.dial_status) == (CallStatus.ENDED, CallOutcome.ANSWERED, "ANSWER")
    assert task.status_reason == "awaiting analysis"


async def test_fastagi_down_means_nothing_is_dialed(pbx_env, sessions):
    _, plan, _ = pbx_env
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    pbx = Pbx(plan, dead_port)
    local = await pbx.originate(1, 1, 1)
    assert local.variables["AGISTATUS"] == "FAILURE"
    assert pbx.dialed == [] and "Dial" not in _apps(local) and "Answer" not in _apps(local)
    assert any(app == "Log" and data.startswith("WARNING,") for app, data in local.executed)


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
    call, task = await _state(sessions, call_id, user_id, task_id)
    assert (call.outcome, call.hangup_cause, task.status) == (CallOutcome.BUSY, 17, TaskStatus.RETRY_SCHEDULED)


async def test_answering_machine_is_hung_up_on_and_recorded_as_voicemail(pbx_env, sessions):
    component, _, rendered = pbx_env
    plan = asterisk.parse(render_dialplan(rendered, amd=True)[EXTENSIONS])
    call_id, user_id, task_id = await _call(sessions)
    pbx = Pbx(plan, component.port, amd_status="MACHINE")
    await pbx.originate(call_id, user_id, task_id)
    assert "AMD" in _apps(pbx.callee_channel) and "AudioSocket" not in _apps(pbx.callee_channel)
    call, _ = await _state(sessions, call_id, user_id, task_id)
    assert call.outcome is CallOutcome.VOICEMAIL


async def test_not_sure_is_put_through_to_the_ai(pbx_env, sessions):
    component, _, rendered = pbx_env
    plan = asterisk.parse(render_dialplan(rendered, amd=True)[EXTENSIONS])
    call_id, user_id, task_id = await _call(sessions)
    pbx = Pbx(plan, component.port, amd_status="NOTSURE")
    await pbx.originate(call_id, user_id, task_id)
    assert "AudioSocket" in _apps(pbx.callee_channel)


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
    assert ("Playback", "vm-goodbye") in pbx.callee_channel.executed
    assert "AudioSocket" not in _apps(pbx.callee_channel)
    call, _ = await _state(sessions, call_id, user_id, task_id)
    assert call.outcome is CallOutcome.FAILED_AI
