"""The call AI's tools end to end: the fake model calls a function, the effect is seen on the wire (AudioSocket
hangup frame, AMI PlayDTMF / Redirect on the fake Asterisk manager) and in the database, and the result goes
back to the model as a function_call_output."""

from __future__ import annotations

import asyncio
import json
import warnings

from ami_controller.manager import AmiController
from db import repo, transfers
from db.models import CallOutcome, FeedbackStatus
from tests.doubles.audiosocket_calls import CALLEE_CHANNEL, asterisk_call, audiosocket_server, make_runtime, seed_call
from tests.doubles.audiosocket_client import tone
from tests.doubles.fake_ami import FakeAmi, pairs_get
from tests.doubles.fake_realtime import FakeResponse

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


async def events_of(sessions, seeded, type_):
    async with sessions() as db:
        return [e for e in await repo.list_call_events(db, seeded.user_id, seeded.call_id) if e.type == type_]


async def function_output(model, timeout=5.0):
    item = (await model.wait_for("conversation.item.create", timeout=timeout))["item"]
    assert item["type"] == "function_call_output"
    return json.loads(item["output"])


async def test_end_call_says_goodbye_then_sends_the_hangup_frame(scene, sessions, realtime):
    goodbye = audioop.lin2ulaw(tone(0.4, 500), 2)
    realtime.greeting = FakeResponse(audio=goodbye, transcript="Thank you, goodbye!", chunk_interval=0.02,
                                     function_call=("end_call", {"outcome": "objective_met",
                                                                 "summary": "Check-up booked for Tuesday 9:00."}))
    seeded = await seed_call(sessions)
    async with audiosocket_server(scene()) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
        await asterisk.wait_hangup(timeout=5)
        await asterisk.wait_eof(timeout=2)
    # The whole goodbye was played before the 00 00 00 frame, which is the last thing sent.
    assert audioop.ulaw2lin(goodbye, 2) in asterisk.received_audio()
    assert (asterisk.received[-1].kind, asterisk.received[-1].payload) == (0x00, b"")
    ended = await events_of(sessions, seeded, "ai.end_call")
    assert ended[0].payload["outcome"] == "objective_met"
    assert ended[0].payload["summary"] == "Check-up booked for Tuesday 9:00."
    tool = await events_of(sessions, seeded, "ai.tool")
    assert tool[0].payload["name"] == "end_call" and tool[0].payload["result"]["ok"] is True
    closing = await events_of(sessions, seeded, "audiosocket.ended")
    assert closing[0].payload["reason"] == "ai_ended"


async def test_end_call_as_voicemail_leaves_the_outcome_hint(scene, sessions, realtime):
    realtime.greeting = FakeResponse(function_call=("end_call", {"outcome": "voicemail", "summary": "mailbox"}))
    seeded = await seed_call(sessions)
    async with audiosocket_server(scene()) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
        await asterisk.wait_hangup(timeout=5)
    async with sessions() as db:
        call = await repo.get_call(db, seeded.user_id, seeded.call_id)
    assert call.outcome is CallOutcome.VOICEMAIL


async def test_hitl_answer_from_the_web_ui_returns_to_the_model(scene, sessions, realtime):
    realtime.greeting = FakeResponse(function_call=("request_user_feedback",
                                                    {"question": "Is Tuesday 9:00 fine?"}))
    seeded = await seed_call(sessions)
    runtime = scene()
    async with runtime.events.subscribe(seeded.user_id) as inbox:
        async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid):
            model = await realtime.wait_for_connection()
            asked = await asyncio.wait_for(inbox.get(), 5)
            while asked.kind != "feedback.asked":
                asked = await asyncio.wait_for(inbox.get(), 5)
            assert asked.payload["question"] == "Is Tuesday 9:00 fine?"
            assert asked.payload["call_id"] == seeded.call_id and asked.payload["task_id"] == seeded.task_id
            # What the web UI does: answer the row, commit, publish.
            async with sessions() as db, db.begin():
                assert await repo.answer_feedback_request(db, seeded.user_id, asked.payload["request_id"],
                                                          "Yes, Tuesday works.")
            runtime.events.publish(seeded.user_id, "feedback.answered",
                                   {"request_id": asked.payload["request_id"], "answer": "Yes, Tuesday works."})
            output = await function_output(model, timeout=2)
            assert output == {"ok": True, "answered": True, "answer": "Yes, Tuesday works."}
            # ... and the model is asked to go on speaking with it.
            await model.wait_for("response.create", count=2, timeout=2)


async def test_hitl_answer_written_by_another_process_is_found_by_polling(scene, sessions, realtime):
    realtime.greeting = FakeResponse(function_call=("request_user_feedback", {"question": "Budget?"}))
    seeded = await seed_call(sessions)
    runtime = scene()
    async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid):
        model = await realtime.wait_for_connection()
        pending = []
        while not pending:
            async with sessions() as db:
                pending = list(await repo.list_pending_feedback(db, seeded.user_id))
            await asyncio.sleep(0.05)
        async with sessions() as db, db.begin():   # no hub event: only the row changes
            await repo.answer_feedback_request(db, seeded.user_id, pending[0].id, "Up to 100 EUR")
        output = await function_output(model, timeout=2)
    assert output["answer"] == "Up to 100 EUR"


async def test_hitl_timeout_tells_the_model_no_answer_came(scene, sessions, realtime):
    realtime.greeting = FakeResponse(function_call=("request_user_feedback", {"question": "Which day?"}))
    seeded = await seed_call(sessions)
    runtime = scene(HITL_TIMEOUT_SECONDS="1")
    async with runtime.events.subscribe(seeded.user_id) as inbox:
        async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid):
            model = await realtime.wait_for_connection()
            output = await function_output(model, timeout=4)
            kinds = []
            while not inbox.empty():
                kinds.append(inbox.get_nowait().kind)
    assert output["answered"] is False and "No answer came from Alice Example" in output["message"]
    assert "feedback.timed_out" in kinds
    async with sessions() as db:
        pending = await repo.list_pending_feedback(db, seeded.user_id)
        timed_out = await events_of(sessions, seeded, "ai.feedback_timed_out")
        request = await repo.get_feedback_request(db, seeded.user_id, timed_out[0].payload["request_id"])
    assert not pending and request.status is FeedbackStatus.TIMED_OUT


async def test_hitl_question_is_cancelled_when_the_callee_hangs_up(scene, sessions, realtime):
    realtime.greeting = FakeResponse(function_call=("request_user_feedback", {"question": "Which day?"}))
    seeded = await seed_call(sessions)
    async with audiosocket_server(scene()) as server:
        async with asterisk_call(server, seeded.as_uuid):
            pending = []
            while not pending:
                async with sessions() as db:
                    pending = list(await repo.list_pending_feedback(db, seeded.user_id))
                await asyncio.sleep(0.05)
        for _ in range(100):   # the bridge cleans up after the EOF
            if not server.bridges:
                break
            await asyncio.sleep(0.02)
    async with sessions() as db:
        request = await repo.get_feedback_request(db, seeded.user_id, pending[0].id)
    assert request.status is FeedbackStatus.CANCELLED


async def test_record_note_and_bad_arguments(scene, sessions, realtime):
    realtime.greeting = FakeResponse(function_call=("record_note", {"text": "Receptionist is called Anna."}))
    realtime.responses = [FakeResponse(function_call=("no_such_tool", {}))]
    seeded = await seed_call(sessions)
    async with audiosocket_server(scene()) as server, asterisk_call(server, seeded.as_uuid):
        model = await realtime.wait_for_connection()
        assert await function_output(model) == {"ok": True}
        second = json.loads((await model.wait_for("conversation.item.create", count=2))["item"]["output"])
    assert second["ok"] is False and "unknown tool" in second["error"]
    notes = await events_of(sessions, seeded, "ai.note")
    assert notes[0].payload["text"] == "Receptionist is called Anna."


async def test_dtmf_and_transfer_go_through_ami_on_the_callee_channel(settings_env, engine, sessions, realtime):
    fake_ami = FakeAmi(username="opendeep", secret="secret")
    ami_port = await fake_ami.start()
    realtime.greeting = FakeResponse(function_call=("send_dtmf", {"digits": "1#"}))
    realtime.responses = [FakeResponse(function_call=("transfer_to_human", {"target": "Front desk"}))]
    runtime = make_runtime(settings_env, engine, sessions, realtime.base_url, AMI_HOST="127.0.0.1",
                           AMI_PORT=str(ami_port), AMI_SECRET="secret")
    ami = AmiController(runtime.settings, sessions, runtime.events)
    runtime.ami = ami
    await ami.start()
    try:
        await ami.wait_connected(5)
        # Seeded after the login re-sync, which would finish a live call the fake Asterisk does not know.
        seeded = await seed_call(sessions)
        async with sessions() as db, db.begin():
            await transfers.add_transfer_target(db, seeded.user_id, "Front desk", "+4930999000")
        async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
            model = await realtime.wait_for_connection()
            first = await fake_ami.wait_for_action("PlayDTMF", timeout=5)
            assert await function_output(model) == {"ok": True, "pressed": "1#"}
            redirect = await fake_ami.wait_for_action("Redirect", timeout=5)
            asterisk_frames = list(asterisk.received)
        dtmf = fake_ami.actions_named("PlayDTMF")
        assert [pairs_get(a, "Digit") for a in dtmf] == ["1", "#"]
        assert {pairs_get(a, "Channel") for a in dtmf} == {CALLEE_CHANNEL}
        assert pairs_get(first, "Channel") == CALLEE_CHANNEL
        # The Redirect names no number: [opendeep-transfer] asks FastAGI for the one this call was allowed.
        assert (pairs_get(redirect, "Channel"), pairs_get(redirect, "Context"), pairs_get(redirect, "Exten"),
                pairs_get(redirect, "Priority")) == (CALLEE_CHANNEL, "opendeep-transfer", "s", "1")
        # DTMF never travels as an AudioSocket frame: Asterisk would drop the call.
        assert {f.kind for f in asterisk_frames} <= {0x10, 0x00}
    finally:
        await ami.stop()
        await fake_ami.stop()
    ended = await events_of(sessions, seeded, "audiosocket.ended")
    assert ended[0].payload["reason"] == "transferred"
    async with sessions() as db:
        assert (await repo.get_call(db, seeded.user_id, seeded.call_id)).transfer_number == "+4930999000"


async def test_dtmf_without_ami_tells_the_model_why(scene, sessions, realtime):
    realtime.greeting = FakeResponse(function_call=("send_dtmf", {"digits": "5"}))
    seeded = await seed_call(sessions)
    async with audiosocket_server(scene()) as server, asterisk_call(server, seeded.as_uuid):
        model = await realtime.wait_for_connection()
        output = await function_output(model)
    assert output["ok"] is False and "AMI" in output["error"]
