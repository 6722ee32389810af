"""`make demo`'s stand-in for Asterisk still runs the shipped dialplan end to end: `opendeep serve` is a subprocess
with its real sockets (web, FastAGI, AudioSocket), AMI goes to the Asterisk simulator (tests/doubles/asterisk_sim.py:
the shipped dialplan, its AGI sessions and the AudioSocket channel), and every model is the scripted fake OpenAI
server (chat + realtime on one base_url).

This is not where Asterisk's behaviour is tested: tests/test_asterisk_calls.py runs the same path against a real
Asterisk 22. What these tests say about Asterisk (the ;1 half is the call's channel, busy never reaches the AI,
DTMF and the transfer act on ;1) is each also asserted there; the rest is OpenDeep's side -- what it sends to
Asterisk and what it answers to the dialplan's AGI calls -- and the simulator following the shipped file.

log in -> chat -> plan -> confirm -> Originate -> call-start AGI (;2) -> Dial -> the callee answers -> call-answered
AGI (;1) -> Dial(AudioSocket/...) -> the call AI asks the user -> the user answers through the JSON API -> the answer
reaches the model -> end_call -> hangup frame -> the `h` extension's call-end AGI -> the analyzer completes the task
-> the campaign summary exists.
"""

from __future__ import annotations

import itertools
import json

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ami_controller.manager import CONNECTED_CONTEXT, OUTBOUND_CONTEXT
from audiosocket.realtime import mulaw_to_slin
from db.engine import create_engine
from db.models import (
    Call,
    CallEvent,
    CallOutcome,
    CallStatus,
    CallTranscript,
    Campaign,
    CampaignStatus,
    FeedbackRequest,
    FeedbackStatus,
    Speaker,
    Task,
    TaskStatus,
)
from tests.asterisk import audio_match
from tests.doubles.ami_helpers import eventually
from tests.doubles.asterisk_sim import Callee
from tests.doubles.audiosocket_client import speech_like
from tests.doubles.fake_ami import pairs_all, pairs_get
from tests.doubles.fake_openai import DEMO_CALLEE_OFFER, ScriptedModels
from tests.doubles.fake_realtime import FakeResponse
from tests.doubles.sim_stack import simulator_stack

NUMBER = "+14155550123"
USER, PASSWORD = "alice", "correct horse battery staple"
ANSWER = "Tuesday at 10:00 please."


@pytest.fixture
async def stack(tmp_path):
    """The fake models, the simulator and `opendeep serve`, all torn down whatever happens."""
    models = ScriptedModels(targets=(("Bright Smile Dental", NUMBER),))
    async with simulator_stack(tmp_path, models, user=USER, password=PASSWORD, talk_seconds=25,
                               env={"HITL_TIMEOUT_SECONDS": "30"}) as (serve, sim, fake):
        yield serve, sim, fake, models


async def _login(http: httpx.AsyncClient) -> str:
    csrf = (await http.get("/api/session")).json()["csrf_token"]
    response = await http.post("/api/login", json={"username": USER, "password": PASSWORD},
                               headers={"x-csrf-token": csrf})
    assert response.status_code == 200, response.text
    assert response.json()["user"]["username"] == USER
    return response.json()["csrf_token"]


async def _db_rows(database_url: str, campaign_id: int):
    engine = create_engine(database_url)
    try:
        async with AsyncSession(engine) as db:
            async def all_of(statement):
                return list((await db.scalars(statement)).all())
            campaign = (await all_of(select(Campaign).where(Campaign.id == campaign_id)))[0]
            tasks = await all_of(select(Task).where(Task.campaign_id == campaign_id))
            calls = await all_of(select(Call).where(Call.task_id.in_([t.id for t in tasks])))
            call_ids = [c.id for c in calls]
            events = await all_of(select(CallEvent).where(CallEvent.call_id.in_(call_ids)).order_by(CallEvent.id))
            lines = await all_of(select(CallTranscript).where(CallTranscript.call_id.in_(call_ids))
                                 .order_by(CallTranscript.offset_ms))
            questions = await all_of(select(FeedbackRequest).where(FeedbackRequest.call_id.in_(call_ids)))
            return campaign, tasks, calls, events, lines, questions
    finally:
        await engine.dispose()


async def test_the_demo_simulator_runs_the_shipped_dialplan_from_chat_to_summary(stack):
    """What `make demo` does, checked: one chat campaign through the simulator's run of the shipped dialplan."""
    serve, sim, fake, models = stack
    async with httpx.AsyncClient(base_url=serve.web_url, timeout=10) as http:
        csrf = await _login(http)
        headers = {"x-csrf-token": csrf}

        # chat -> plan -> confirm
        chat_id = (await http.post("/api/chats", json={}, headers=headers)).json()["id"]
        turn = await http.post(f"/api/chats/{chat_id}/messages", headers=headers,
                               json={"text": "Call Bright Smile Dental and book me a cleaning next week."})
        assert turn.status_code == 200, turn.text
        plan = turn.json()["plan"]
        assert [t["phone_number"] for t in plan["targets"]] == [NUMBER]
        source_key = turn.json()["chat"]["source_key"]
        confirmed = await http.post(f"/api/chats/{chat_id}/confirm", json={"source_key": source_key},
                                    headers=headers)
        assert confirmed.status_code == 201, confirmed.text
        campaign_id, [task_id] = confirmed.json()["campaign_id"], confirmed.json()["task_ids"]

        # The scheduler places the call: one Originate with the four variables as separate headers; the ;1 half
        # goes to [opendeep-connected] once the callee answers.
        call = await sim.wait_for_call(timeout=15)
        originate = call.originate
        assert pairs_get(originate, "Channel") == f"Local/{NUMBER}@{OUTBOUND_CONTEXT}/n"
        assert [pairs_get(originate, h) for h in ("Context", "Exten", "Priority")] == [CONNECTED_CONTEXT, "s", "1"]
        variables = pairs_all(originate, "Variable")
        assert len(variables) == 4
        assert {v.split("=", 1)[0] for v in variables} == {"OPENDEEP_CALL_ID", "OPENDEEP_TASK_ID",
                                                           "OPENDEEP_USER_ID", "OPENDEEP_NUMBER"}
        assert call.variables["OPENDEEP_TASK_ID"] == str(task_id) and call.variables["OPENDEEP_NUMBER"] == NUMBER
        call_id = call.call_id

        # The call AI connects and asks the user; the question shows up in the UI's API.
        session = await fake.realtime.wait_for_connection(timeout=15)
        pending = await eventually(lambda: _pending_questions(http), 15, 0.1, what="the HITL question in /api/feedback")
        assert pending[0]["question"] == models.question
        answered = await http.post(f"/api/feedback/{pending[0]['request_id']}/answer", json={"answer": ANSWER},
                                   headers=headers)
        assert answered.status_code == 200 and answered.json()["status"] == "answered", answered.text

        # The answer reaches the model as the function's output, on the realtime wire.
        output = await eventually(lambda: _function_outputs(session), 10, 0.1,
                                  what="function_call_output on the realtime wire")
        assert output[0]["answer"] == ANSWER and output[0]["answered"] is True
        assert models.answers_heard == [ANSWER]

        # The AI ends the call; the dialplan runs to the end (h extension); the analyzer completes the task.
        await call.wait_done(timeout=20)
        task = await eventually(lambda: _task_if(http, task_id, "completed"), 20, 0.1, what="the task to be completed")
        assert task["calls"][0]["id"] == call_id
        summary = await eventually(lambda: _summary(http, campaign_id), 20, 0.1, what="the campaign summary")
        assert summary["summary_text"] and "booked" in summary["summary_text"]
        assert summary["rows"] and summary["rows"][0][summary["columns"].index("status")] == "completed"

    # ---- OpenDeep's side of the wire, as the simulator saw it run the shipped dialplan
    assert call.error is None
    assert call.agi_scripts() == ["call-start", "call-answered", "call-end"]
    start, answered, end = (call.agi_run(name) for name in ("call-start", "call-answered", "call-end"))
    assert start.agi_status == answered.agi_status == "SUCCESS"
    # call-start (on ;2) answers what Dial() rings; call-answered (on ;1) where the AI is: each in one EXEC MSet.
    assert call.local.variables["OPENDEEP_DIAL"] == f"PJSIP/{NUMBER}@opendeep-trunk"
    assert call.dialed == [[f"PJSIP/{NUMBER}@opendeep-trunk", "10"]]
    assert [c.split()[:2] for c in answered.commands] == [["EXEC", "MSet"]]
    assert {"OPENDEEP_AS_ADDR", "OPENDEEP_BRIDGE", "OPENDEEP_MAX_SECONDS", "OPENDEEP_RECORDING",
            "OPENDEEP_AS_UUID"} <= set(answered.variables)
    connected = call.connected
    assert connected.name == call.fake.one.name and connected.name.endswith(";1")
    assert connected.variables["TIMEOUT(absolute)"] == "600"
    as_uuid = connected.variables["OPENDEEP_AS_UUID"]
    assert ("Dial", f"AudioSocket/{connected.variables['OPENDEEP_AS_ADDR']}/{as_uuid}/c(slin)") in connected.executed
    assert any("DIALSTATUS" in c for c in end.commands) and any("HANGUPCAUSE" in c for c in end.commands)
    assert call.local.variables["DIALSTATUS"] == "ANSWER"
    # The app ended the call with the hangup frame, after speaking 20 ms frames of slin to the callee.
    audio = call.audio
    assert call.app_hung_up and audio.received[-1].kind == 0x00
    frames = audio.audio_frames()
    assert len(frames) > 50 and all(len(f.payload) == 320 for f in frames)
    assert any(not f.silent for f in frames), "the callee heard the AI"
    assert audio.sent_audio_frames > 50

    # ---- the realtime wire, as the model saw it
    config = session.session_config()
    assert {tool["name"] for tool in config["tools"]} >= {"request_user_feedback", "end_call"}
    # The callee's speech reached the model from its first word: what was said while the model connected in
    # chunks of at most 1 s, then 20 ms per append, until the AI ended the call.
    offsets = [offset for _, offset in session.append_times] + [len(session.audio_in)]
    sizes = [after - before for before, after in itertools.pairwise(offsets)]
    assert len(sizes) > 40 and all(size % 160 == 0 and size <= 50 * 160 for size in sizes), sizes
    assert sizes[-40:] == [160] * 40
    callee = sim.default_callee
    said = audio_match.trim_silence(speech_like(callee.speech_seconds, seed=callee.speech_seed))
    offset_ms, score = audio_match.find(said, mulaw_to_slin(bytes(session.audio_in)))
    assert offset_ms < 100 and score > 0.9, (offset_ms, score)

    # ---- the database
    campaign, tasks, calls, events, lines, questions = await _db_rows(serve.env["DATABASE_URL"], campaign_id)
    assert campaign.status is CampaignStatus.COMPLETED and campaign.summarized_at is not None
    (task_row,), (call_row,) = tasks, calls
    assert (task_row.status, task_row.attempt_count) == (TaskStatus.COMPLETED, 1)
    assert (call_row.status, call_row.outcome) == (CallStatus.ENDED, CallOutcome.ANSWERED)
    assert (call_row.dial_status, call_row.hangup_cause) == ("ANSWER", 16)
    assert call_row.channel == connected.name and call_row.bridged_to_ai   # the ;1 half (real test: same)
    assert call_row.audiosocket_uuid == as_uuid
    assert call_row.answered_at is not None and call_row.ended_at is not None
    assert call_row.analysis["outcome"] == "success"
    (question,) = questions
    assert (question.status, question.answer) == (FeedbackStatus.ANSWERED, ANSWER)
    types = [e.type for e in events]
    for expected in ("ami.originate", "ami.originate_response", "agi.call_start", "agi.call_answered",
                     "audiosocket.connected", "ai.connected", "ai.feedback_asked", "ai.end_call", "audiosocket.ended"):
        assert expected in types, (expected, types)
    assert next(e for e in events if e.type == "audiosocket.ended").payload["reason"] == "ai_ended"
    end_call = next(e for e in events if e.type == "ai.end_call")
    assert end_call.payload["outcome"] == "objective_met" and ANSWER in end_call.payload["summary"]
    agent = [line.text for line in lines if line.speaker is Speaker.AGENT]
    assert agent[0].startswith("Hello, this is an AI assistant") and ANSWER in agent[-1]
    # Both sides, in the order they spoke: greeting, the callee's offer, the goodbye, the callee's last words.
    assert [line.speaker for line in lines] == [Speaker.AGENT, Speaker.CALLEE, Speaker.AGENT, Speaker.CALLEE]
    assert lines[1].text == DEMO_CALLEE_OFFER and lines[1].offset_ms >= lines[0].offset_ms


async def _confirm_one_call(http: httpx.AsyncClient) -> tuple[int, int]:
    """Log in, chat a plan for the one target, confirm it: (campaign id, task id)."""
    headers = {"x-csrf-token": await _login(http)}
    chat_id = (await http.post("/api/chats", json={}, headers=headers)).json()["id"]
    turn = await http.post(f"/api/chats/{chat_id}/messages", json={"text": "Call the dentist."}, headers=headers)
    confirmed = await http.post(f"/api/chats/{chat_id}/confirm", headers=headers,
                                json={"source_key": turn.json()["chat"]["source_key"]})
    assert confirmed.status_code == 201, confirmed.text
    [task_id] = confirmed.json()["task_ids"]
    return confirmed.json()["campaign_id"], task_id


async def _pending_questions(http: httpx.AsyncClient):
    return (await http.get("/api/feedback")).json()["pending"]


def _function_outputs(session) -> list[dict]:
    return [json.loads(e["item"]["output"]) for e in session.events("conversation.item.create")
            if e.get("item", {}).get("type") == "function_call_output"
            and json.loads(e["item"]["output"]).get("answered")]


async def _task_if(http: httpx.AsyncClient, task_id: int, status: str):
    task = (await http.get(f"/api/tasks/{task_id}")).json()
    return task if task["status"] == status else None


async def _summary(http: httpx.AsyncClient, campaign_id: int):
    summary = (await http.get(f"/api/campaigns/{campaign_id}/summary")).json()
    return summary if summary.get("summarized_at") else None


async def test_the_simulator_reports_a_busy_callee_as_the_real_asterisk_does(stack):
    """The simulator's unanswered path (tests/test_asterisk_calls.py::test_unanswered_calls_end_as_asterisk_reports
    _them_and_never_reach_the_ai asserts the same of a real Asterisk): the Originate fails, the call ends busy and
    the AI is never connected."""
    serve, sim, fake, _ = stack
    sim.script_number(NUMBER, Callee("busy"))
    async with httpx.AsyncClient(base_url=serve.web_url, timeout=10) as http:
        campaign_id, task_id = await _confirm_one_call(http)
        call = await (await sim.wait_for_call(timeout=15)).wait_done(timeout=15)
        task = await eventually(lambda: _task_if(http, task_id, "failed"), 15, 0.1,
                                what="the task to fail (one attempt, busy)")
    assert task["calls"][0]["outcome"] == "busy"
    assert call.agi_scripts() == ["call-start", "call-end"] and call.connected is None and call.audio is None
    _, _, (call_row,), _, _, _ = await _db_rows(serve.env["DATABASE_URL"], campaign_id)
    assert (call_row.outcome, call_row.dial_status) == (CallOutcome.BUSY, "BUSY")
    assert call_row.answered_at is None and not call_row.bridged_to_ai
    response = await eventually(lambda: _event(serve, campaign_id, "ami.originate_response"), 10, 0.1,
                                what="the OriginateResponse, which comes after the `h` extension's call-end")
    assert (response.payload["response"], response.payload["reason"]) == ("Failure", "0")
    assert fake.realtime.connections == []


async def _event(serve, campaign_id: int, type_: str):
    *_, events, _, _ = await _db_rows(serve.env["DATABASE_URL"], campaign_id)
    return next((e for e in events if e.type == type_), None)


async def test_the_simulator_takes_dtmf_and_the_transfer_on_the_connected_half(stack):
    """send_dtmf -> AMI PlayDTMF per digit on the ;1 half -> the callee hears them; transfer_to_human (a target
    the user listed, by name) -> AMI Redirect of ;1 into [opendeep-transfer] -> ;1 leaves Dial(AudioSocket) (the
    socket closes, no hangup frame), its AGI transfer gives the number, Dial() rings the person.
    tests/test_asterisk_calls.py::test_the_ai_presses_keys_the_ivr_reads_them_then_transfers_the_callee_to_a_person
    shows the same on a real Asterisk."""
    serve, sim, fake, models = stack
    person = "+14155550999"
    speech = models.speech

    def ivr_then_transfer(conn, index):
        if index == 0:
            return FakeResponse(audio=speech, transcript="Pressing 1 for appointments.",
                                function_call=("send_dtmf", {"digits": "1#"}))
        if index == 1:
            return FakeResponse(audio=speech, transcript="Let me put you through to the front desk.",
                                function_call=("transfer_to_human", {"target": "Front desk"}))
        return None
    fake.realtime.script = ivr_then_transfer
    async with httpx.AsyncClient(base_url=serve.web_url, timeout=10) as http:
        headers = {"x-csrf-token": await _login(http)}
        added = await http.post("/api/transfer-targets", json={"name": "Front desk", "phone_number": person},
                                headers=headers)
        assert added.status_code == 201, added.text
        campaign_id, task_id = await _confirm_one_call(http)
        call = await (await sim.wait_for_call(timeout=15)).wait_done(timeout=30)
        await eventually(lambda: _task_if(http, task_id, "completed"), 20, 0.1, what="the task to be completed")

    one = call.connected.name
    assert one == call.fake.one.name and one.endswith(";1")
    assert call.dtmf_heard == ["1", "#"]
    dtmf = sim.ami.actions_named("PlayDTMF")
    assert [(pairs_get(a, "Channel"), pairs_get(a, "Digit")) for a in dtmf] == [(one, "1"), (one, "#")]
    (redirect,) = sim.ami.actions_named("Redirect")
    assert [(k, v) for k, v in redirect if k in ("Channel", "Context", "Exten", "Priority")] == [
        ("Channel", one), ("Context", "opendeep-transfer"), ("Exten", "s"), ("Priority", "1")]
    # ;1 left Dial(AudioSocket) for the transfer: the app sent no hangup frame; the shipped [opendeep-transfer]
    # asked FastAGI for the number and rang the person through the trunk.
    assert not call.app_hung_up and call.audio.received[-1].kind != 0x00
    assert ("Redirect", "opendeep-transfer,s,1") in call.connected.executed
    assert call.agi_scripts() == ["call-start", "call-answered", "transfer", "call-end"]
    assert call.transfer_dialed == [[f"PJSIP/{person}@opendeep-trunk", "30"]]
    assert call.connected.variables["DIALSTATUS"] == "ANSWER"

    _, _, (call_row,), events, _, _ = await _db_rows(serve.env["DATABASE_URL"], campaign_id)
    tools = [(e.payload["name"], e.payload["result"]["ok"]) for e in events if e.type == "ai.tool"]
    assert tools == [("send_dtmf", True), ("transfer_to_human", True)]
    ended = next(e for e in events if e.type == "audiosocket.ended")
    assert (ended.payload["reason"], ended.payload["detail"]) == ("transferred", "Front desk")
    transfer = next(e for e in events if e.type == "agi.transfer")
    assert (transfer.payload["number"], transfer.payload["refused"]) == (person, None)
    assert call_row.transfer_number is None   # the permission was used up
    assert (call_row.status, call_row.outcome, call_row.dial_status) == (CallStatus.ENDED, CallOutcome.ANSWERED,
                                                                         "ANSWER")
