"""The product's call path against a real Asterisk 22: `opendeep serve` (a subprocess with real sockets), the
dialplan and AMI user that `opendeep dialplan render` wrote, #included by the private Asterisk as an admin would,
Local-channel callees (tests/asterisk/extensions_test.conf) and the fake OpenAI server the real SDK connects to.
Every WARNING or ERROR Asterisk logs fails the test unless the test names it (the `asterisk` fixture).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from db.models import CallOutcome, CallStatus, Speaker
from tests.asterisk import audio_match
from tests.asterisk.stack import (
    ANSWERING_MACHINE,
    ANSWERS,
    BUSY,
    CONGESTED,
    HANGS_UP_FIRST,
    IVR,
    NO_ANSWER,
    PERSON,
    SPEAKS_LATER,
)
from tests.doubles.ami_helpers import eventually

pytestmark = pytest.mark.asterisk

ANSWER = "Tuesday at 10:00 please."


@pytest.fixture
async def stack(make_stack):
    return await make_stack()


def _prompt_audio(asterisk, name: str, tmp_path) -> bytes:
    """A stock prompt as signed linear audio, converted by Asterisk itself (`file convert`)."""
    out = tmp_path / f"{name}.sln"
    asterisk.rx(f"file convert {asterisk.workdir / 'data' / 'sounds' / 'en' / name}.gsm {out}")
    return out.read_bytes()


async def test_chat_campaign_call_is_answered_talks_both_ways_asks_the_user_and_ends(stack, asterisk, tmp_path):
    """chat -> plan -> confirm -> Originate -> call-start -> ring -> answer -> call-answered -> AudioSocket <-> model
    (audio checked on the Asterisk side both ways) -> HITL question answered -> end_call -> h call-end ->
    analyzer -> summary."""
    http, headers = stack.http, {"x-csrf-token": stack.csrf}
    chat_id = (await http.post("/api/chats", json={}, headers=headers)).json()["id"]
    turn = await http.post(f"/api/chats/{chat_id}/messages", headers=headers,
                           json={"text": "Call the test callee and book me a cleaning."})
    assert turn.status_code == 200, turn.text
    confirmed = await http.post(f"/api/chats/{chat_id}/confirm", headers=headers,
                                json={"source_key": turn.json()["chat"]["source_key"]})
    assert confirmed.status_code == 201, confirmed.text
    campaign_id, [task_id] = confirmed.json()["campaign_id"], confirmed.json()["task_ids"]

    answered = await stack.observer.wait_event("UserEvent", 30, UserEvent="OpenDeepTestCallee")
    session = await stack.fake.realtime.wait_for_connection(timeout=15)
    pending = await eventually(lambda: _pending(stack), 20, 0.2, what="the HITL question")
    reply = await stack.api("POST", f"/api/feedback/{pending[0]['request_id']}/answer", json={"answer": ANSWER})
    assert reply.status_code == 200, reply.text
    task = await stack.wait_task(task_id, "completed", timeout=60)
    summary = await eventually(lambda: _summary(stack, campaign_id), 30, 0.2, what="the campaign summary")
    assert summary["rows"][0][summary["columns"].index("status")] == "completed"
    assert task["calls"][0]["outcome"] == "answered"

    (call, events, lines), = await stack.call_rows(task_id)
    assert (call.status, call.outcome, call.dial_status, call.hangup_cause) == (
        CallStatus.ENDED, CallOutcome.ANSWERED, "ANSWER", 16)
    assert call.channel.startswith(f"Local/{ANSWERS}@opendeep-outbound-") and call.channel.endswith(";1")
    assert call.bridged_to_ai and call.analysis["outcome"] == "success"
    types = [event.type for event in events]
    for expected in ("ami.originate_response", "agi.call_start", "agi.call_answered", "audiosocket.connected",
                     "ai.connected", "ai.feedback_asked", "ai.end_call", "audiosocket.ended"):
        assert expected in types, (expected, types)
    # Each event carries the time it happened (the recorder writes later): by time they are in causal order.
    causal = ["agi.call_start", "agi.call_answered", "audiosocket.connected", "ai.connected", "ai.feedback_asked",
              "ai.end_call", "audiosocket.ended"]
    assert [t for t in types if t in causal] == causal, types
    ended = next(e for e in events if e.type == "audiosocket.ended")
    assert ended.payload["reason"] == "ai_ended"
    assert [line.speaker for line in lines][:2] == [Speaker.AGENT, Speaker.CALLEE]

    # What the callee heard (MixMonitor r() on its channel) holds the model's speech.
    heard = audio_match.read_wav(asterisk.recordings / f"heard-{answered['Uniqueid']}.wav")
    spoken = audio_match.trim_silence(audio_match.mulaw_to_slin(stack.models.speech))
    offset, score = audio_match.find(spoken, heard)
    assert score > 0.9, (offset, score)
    # The model received the callee's prompt, from its first word.
    prompt = audio_match.trim_silence(_prompt_audio(asterisk, "hello-world", tmp_path))
    received = audio_match.mulaw_to_slin(bytes(session.audio_in))
    offset, score = audio_match.find(prompt, received)
    assert score > 0.9, (offset, score)


async def _event(stack, task_id, type_):
    (_, events, _), = await stack.call_rows(task_id)
    return next((e for e in events if e.type == type_), None)


async def _pending(stack):
    return (await stack.api("GET", "/api/feedback")).json()["pending"]


async def _summary(stack, campaign_id):
    summary = (await stack.api("GET", f"/api/campaigns/{campaign_id}/summary")).json()
    return summary if summary.get("summarized_at") else None


@pytest.mark.parametrize(("number", "outcome", "dial_status"), [
    (BUSY, "busy", "BUSY"),
    (NO_ANSWER, "no_answer", "NOANSWER"),
    (CONGESTED, "congestion", "CONGESTION"),
])
async def test_unanswered_calls_end_as_asterisk_reports_them_and_never_reach_the_ai(
        stack, number, outcome, dial_status):
    _, [task_id] = await stack.import_campaign([("Callee", number)])
    task = await stack.wait_task(task_id, "failed", timeout=40)
    (call, events, _), = await stack.call_rows(task_id)
    assert (call.outcome.value, call.dial_status) == (outcome, dial_status), [e.payload for e in events]
    assert call.answered_at is None and not call.bridged_to_ai
    response = await eventually(lambda: _event(stack, task_id, "ami.originate_response"), 10, 0.2,
                                what="the OriginateResponse, which comes after the `h` extension's call-end")
    # Nothing answered before the callee did. On a Local channel Asterisk gives Reason 0 whatever the cause:
    # the ;2 half's DialEnd and the `h` extension's DIALSTATUS say what happened.
    assert (response.payload["response"], response.payload["reason"]) == ("Failure", "0")
    assert stack.fake.realtime.connections == []
    assert task["calls"][0]["outcome"] == outcome


def _say(stack, *steps):
    """The call AI's script: each step is (transcript, function call or None), spoken as the model's speech."""
    from tests.doubles.fake_realtime import FakeResponse

    def script(conn, index):
        if index >= len(steps):
            return None
        transcript, function_call = steps[index]
        return FakeResponse(audio=stack.models.speech, transcript=transcript, chunk_interval=0.1,
                            function_call=function_call)
    stack.fake.realtime.script = script


async def test_the_ai_presses_keys_the_ivr_reads_them_then_transfers_the_callee_to_a_person(stack, asterisk):
    """send_dtmf -> AMI PlayDTMF on the ;1 half -> the callee's Read() gets the digits; transfer_to_human (a
    target the user listed, by name) -> AMI Redirect of the ;1 half into [opendeep-transfer] -> its AGI gives the
    number -> the person answers and is bridged with the callee."""
    _say(stack, ("Pressing four two.", ("send_dtmf", {"digits": "42#"})),
         ("Putting you through.", ("transfer_to_human", {"target": "Front desk"})))
    added = await stack.api("POST", "/api/transfer-targets", json={"name": "Front desk", "phone_number": PERSON})
    assert added.status_code == 201, added.text
    _, [task_id] = await stack.import_campaign([("IVR", IVR)])
    digits = await stack.observer.wait_event("UserEvent", 40, UserEvent="OpenDeepTestDigits")
    assert (digits["Digits"], digits["Status"]) == ("42", "OK")
    person = await stack.observer.wait_event("UserEvent", 30, UserEvent="OpenDeepTestPerson")
    (call, _, _), = await stack.call_rows(task_id)
    # The person's channel and OpenDeep's ;1 half (the callee on its far side) are in one bridge.
    bridge_of = {}
    for event in stack.observer.events("BridgeEnter"):
        bridge_of.setdefault(event["Channel"], set()).add(event["BridgeUniqueid"])
    person_peer = person["Channel"].replace(";2", ";1")
    assert bridge_of[call.channel] & bridge_of[person_peer], (call.channel, person_peer, bridge_of)
    await stack.wait_task(task_id, "completed", timeout=60)
    (call, events, _), = await stack.call_rows(task_id)
    tools = [(e.payload["name"], e.payload["result"]["ok"]) for e in events if e.type == "ai.tool"]
    assert tools == [("send_dtmf", True), ("transfer_to_human", True)]
    ended = next(e for e in events if e.type == "audiosocket.ended")
    assert (ended.payload["reason"], ended.payload["detail"]) == ("transferred", "Front desk")
    transfer = next(e for e in events if e.type == "agi.transfer")
    assert (transfer.payload["number"], transfer.payload["refused"]) == (PERSON, None)
    assert call.transfer_number is None   # the permission was used up
    assert (call.outcome, call.dial_status) == (CallOutcome.ANSWERED, "ANSWER")


async def test_a_callee_who_hangs_up_first_ends_the_call_cleanly(stack, asterisk):
    _say(stack, ("Hello, this is an AI assistant.", None))
    _, [task_id] = await stack.import_campaign([("Hangs up", HANGS_UP_FIRST)])
    await stack.wait_task(task_id, "completed", timeout=40)
    (call, events, _), = await stack.call_rows(task_id)
    ended = next(e for e in events if e.type == "audiosocket.ended")
    assert ended.payload["reason"] == "caller_hung_up"
    assert (call.outcome, call.dial_status, call.hangup_cause) == (CallOutcome.ANSWERED, "ANSWER", 16)


async def test_amd_hangs_up_on_an_answering_machine_and_records_voicemail(stack, asterisk):
    await stack.install_dialplan("--amd")
    _, [task_id] = await stack.import_campaign([("Machine", ANSWERING_MACHINE)])
    await stack.wait_task(task_id, "completed", "failed", "retry_scheduled", timeout=60)
    (call, events, _), = await stack.call_rows(task_id)
    amd = next(e for e in events if e.type == "agi.amd")
    assert (amd.payload["amd_status"], amd.payload["action"]) == ("MACHINE", "hangup"), amd.payload
    assert call.outcome is CallOutcome.VOICEMAIL
    assert stack.fake.realtime.connections == []   # the AI never spoke to the machine


async def test_every_context_the_code_originates_or_redirects_into_exists_in_asterisk(asterisk, settings, tmp_path):
    """Asked of Asterisk itself (`dialplan show`), with the files `opendeep dialplan render` writes."""
    from ami_controller.manager import CONNECTED_CONTEXT, OUTBOUND_CONTEXT, TRANSFER_CONTEXT
    from dialplan.render import render_dialplan

    asterisk.install_opendeep(render_dialplan(settings, directory=tmp_path))
    # The Originate: Channel Local/<number>@opendeep-outbound, then Context/Exten/Priority opendeep-connected,s,1.
    outbound = asterisk.rx(f"dialplan show +14155550123@{OUTBOUND_CONTEXT}")
    assert "'_[+0-9].' =>     1. NoOp(" in outbound and "Dial(${OPENDEEP_DIAL},${OPENDEEP_RING_SECONDS})" in outbound
    connected = asterisk.rx(f"dialplan show s@{CONNECTED_CONTEXT}")
    assert "'s' =>            1. NoOp(" in connected and "Dial(AudioSocket/" in connected
    # The transfer: Redirect to opendeep-transfer,s,1 (no number travels in it).
    transfer = asterisk.rx(f"dialplan show s@{TRANSFER_CONTEXT}")
    assert "'s' =>            1. NoOp(" in transfer and "Dial(${OPENDEEP_TRANSFER_DIAL},30)" in transfer
    assert "-= 1 extension" in outbound and "-= 1 extension" in connected and "-= 1 extension" in transfer


async def test_the_call_is_recorded_both_ways_and_only_its_owner_can_fetch_it(stack, asterisk, tmp_path):
    """RECORD_CALLS (default on): call-answered names the file, the dialplan's MixMonitor writes it on the ;1
    half, the AI says the call is recorded, and the web UI serves it to the call's owner only."""
    from tests.doubles.fake_realtime import FakeResponse

    stack.fake.realtime.script = lambda conn, index: None
    _, [task_id] = await stack.import_campaign([("Speaks later", SPEAKS_LATER)])
    session = await stack.fake.realtime.wait_for_connection(timeout=20)
    await session.wait_for("session.update")
    assert "the call is recorded" in session.session_config()["instructions"]
    # The callee's prompt (about 1.2 s; a silent line sends no frames through the AudioSocket channel), then the
    # AI's words: one after the other, so neither is masked in the mixed recording however late the model starts.
    await eventually(lambda: len(session.audio_in) >= 8000, 20, 0.1, what="the callee's prompt")
    await asyncio.sleep(1.5)
    await session.speak(FakeResponse(audio=stack.models.speech, transcript="Hello, this call is recorded.",
                                     chunk_interval=0.1))
    await asyncio.sleep(2.0)
    await session.speak(FakeResponse(function_call=("end_call", {"outcome": "objective_met", "summary": "ok"})))
    await stack.wait_task(task_id, "completed", timeout=40)
    (call, _, _), = await stack.call_rows(task_id)
    path = stack.workdir / "recordings" / str(call.user_id) / f"{call.id}.wav"
    recorded = audio_match.read_wav(path)
    spoken = audio_match.trim_silence(audio_match.mulaw_to_slin(stack.models.speech))
    prompt = audio_match.trim_silence(_prompt_audio(asterisk, "hello-world", tmp_path))
    assert audio_match.find(spoken, recorded)[1] > 0.9      # what the AI said
    assert audio_match.find(prompt, recorded)[1] > 0.9      # what the callee said
    fetched = await stack.http.get(f"/calls/{call.id}/recording.wav")
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "audio/wav"
    assert fetched.content == path.read_bytes()
    assert f'src="/calls/{call.id}/recording.wav"' in (await stack.http.get(f"/calls/{call.id}")).text
    await stack.serve.cli("user", "add", "mallory", "--password-stdin", input="another long password\n")
    async with httpx.AsyncClient(base_url=stack.serve.web_url, timeout=10) as other:
        csrf = (await other.get("/api/session")).json()["csrf_token"]
        await other.post("/api/login", json={"username": "mallory", "password": "another long password"},
                         headers={"x-csrf-token": csrf})
        assert (await other.get(f"/calls/{call.id}/recording.wav")).status_code == 404
