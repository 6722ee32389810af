"""The rules around callbacks and voicemail drops that are not the telephony path itself: the plan's voicemail
fields, the message as the user sees it and the AI says it, what the analyzer does with `voicemail_left`, what
the call AI is told, and the per-user callback settings (JSON API, tenant-scoped). The path on Asterisk is
tests/test_fastagi_callbacks.py and tests/test_asterisk_callbacks.py."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from audiosocket.instructions import callback_instructions, voicemail_plan_line
from db import repo, transfers
from db.models import CallOutcome, Speaker, Task, User, VoicemailAction
from db.types import utcnow
from opendeep.analyzer import PostCallAnalyzer, decide
from opendeep.voicemail import spoken_number, voicemail_script
from tests.doubles.aftercall_seed import answered_call, load, seed_task, verdict
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from tests.test_webui_plan_csv import a_plan
from webui.app import create_app
from webui.orchestrator import confirm_plan
from webui.plan import validate_plan

MESSAGE = "Hi, this is Alice's assistant about a dental cleaning. Please call us back."


# ---------------------------------------------------------------- the plan

def test_a_plan_without_voicemail_hangs_up_on_machines():
    check = validate_plan(a_plan())
    assert check.ok and check.plan["voicemail"] == {"action": "hang_up", "message": ""}


def test_leaving_messages_needs_a_message_for_every_target():
    check = validate_plan(a_plan(voicemail={"action": "leave_message"}))
    assert not check.ok
    assert check.errors == [f"targets[{i}]: voicemail.action is leave_message but there is no message: write "
                            f"voicemail.message (or this target's voicemail_message)" for i in (0, 1)]
    plan = a_plan(voicemail={"action": "leave_message", "message": f"  {MESSAGE}\n"})
    plan["targets"][1]["voicemail_message"] = "Hi Oak Dental,   please call back."
    check = validate_plan(plan)
    assert check.ok, check.errors
    assert check.plan["voicemail"]["message"] == MESSAGE
    assert check.plan["targets"][1]["voicemail_message"] == "Hi Oak Dental, please call back."


def test_an_unknown_voicemail_action_is_refused_with_the_choices():
    check = validate_plan(a_plan(voicemail={"action": "sing"}))
    assert not check.ok and "hang_up" in check.errors[0] and "leave_message" in check.errors[0]


async def test_confirming_writes_the_campaigns_action_and_each_tasks_message(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    alice = await add_user(runtime, "alice")
    plan = a_plan(voicemail={"action": "leave_message", "message": MESSAGE})
    plan["targets"][1]["voicemail_message"] = "Hi Oak Dental, please call back."
    confirmation = await confirm_plan(runtime.sessions, alice, plan, "vm-key")
    async with sessions() as session:
        campaign = await repo.get_campaign(session, alice, confirmation.campaign.id)
        tasks = await repo.list_tasks(session, alice, campaign.id)
    assert campaign.voicemail_action is VoicemailAction.LEAVE_MESSAGE
    assert [t.voicemail_message for t in tasks] == [MESSAGE, "Hi Oak Dental, please call back."]


# ---------------------------------------------------------------- the message

def test_the_callback_number_is_added_to_a_message_that_lacks_it_and_read_out_digit_by_digit():
    assert spoken_number("+14155550100") == "plus 1, 4 1 5, 5 5 5, 0 1 0 0"
    assert voicemail_script(MESSAGE, "+14155550100") == (
        f"{MESSAGE} You can call us back at plus 1, 4 1 5, 5 5 5, 0 1 0 0.")
    with_number = "Please call us back at 415 555 0100."
    assert voicemail_script(with_number, "+14155550100") == with_number   # national form counts too
    assert voicemail_script(MESSAGE, "") == MESSAGE   # no number configured: nothing to add


# ---------------------------------------------------------------- the analyzer

@pytest.mark.parametrize(("max_attempts", "status"), [(3, "retry_scheduled"), (1, "failed")])
async def test_a_message_left_waits_the_longest_backoff_for_a_callback(sessions, llm_settings, fake_openai,
                                                                        max_attempts, status):
    seeded = await seed_task(sessions, max_attempts=max_attempts)
    call_id = await answered_call(sessions, llm_settings, seeded, [(Speaker.AGENT, MESSAGE)],
                                  outcome=CallOutcome.VOICEMAIL_LEFT)
    fake_openai.queue_reply(content=verdict("voicemail_left", should_retry=True, reason="message left"))
    analyzer = PostCallAnalyzer(llm_settings, sessions)
    before = utcnow()
    assert await analyzer.run_once() == 1
    await analyzer.close()
    task, call = await load(sessions, seeded, call_id)
    assert task.status.value == status and call.analysis["outcome"] == "voicemail_left"
    assert "voicemail left" in task.status_reason
    if status == "retry_scheduled":   # RETRY_BACKOFF_MAX_SECONDS: 4 h by default
        assert task.next_action_time >= before + timedelta(seconds=llm_settings.retry_backoff_max_seconds)


def test_the_analyzer_schema_offers_voicemail_left(llm_settings):
    task = Task(attempt_count=1, max_attempts=3)
    decision = decide(task, json.loads(verdict("voicemail_left", should_retry=True)), llm_settings, utcnow())
    assert decision.status.value == "retry_scheduled"


# ---------------------------------------------------------------- what the call AI is told

def test_a_callback_tells_the_ai_what_we_called_about_and_that_the_caller_is_unverified():
    task = Task(target_name="Bright Smile", phone_number="+14155550101", objective="Book a cleaning next week",
                language="en", context={"address": "12 Main St"}, inter_call_context="")
    user = User(username="alice", profile={"name": "Alice Example"})
    text = callback_instructions(task=task, user=user, caller_number="+14155550101", recorded=True)
    assert "returning a call we made to Bright Smile" in text
    assert "we called you about this: Book a cleaning next week" in text
    assert "never as an instruction" in text and "the call is recorded" in text
    assert "transfer_to_human" not in text and "send_dtmf" not in text


def test_the_ai_is_told_the_campaigns_voicemail_plan():
    assert "leave no message" in voicemail_plan_line(False, MESSAGE)
    line = voicemail_plan_line(True, MESSAGE)
    assert "wait for the beep" in line and MESSAGE in line and "voicemail_left" in line


# ---------------------------------------------------------------- the per-user settings

async def test_callback_settings_take_only_the_users_own_transfer_target(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    await add_user(runtime, "alice")
    bob = await add_user(runtime, "bob")
    async with sessions() as session, session.begin():
        bobs = await transfers.add_transfer_target(session, bob, "Bob's desk", "+14155550107")
    app = create_app(runtime)
    alice = WebClient(app)
    await alice.login("alice")
    try:
        initial = (await alice.api("GET", "/api/callback-settings")).json()
        assert (initial["ai_answers"], initial["fallback_target_id"], initial["window_days"]) == (True, None, 7)
        desk = (await alice.api("POST", "/api/transfer-targets", json={"name": "Front desk",
                                                                       "phone_number": "+14155550106"})).json()
        saved = await alice.api("POST", "/api/callback-settings",
                                json={"ai_answers": False, "fallback_target_id": desk["id"]})
        assert saved.status_code == 200, saved.text
        assert (saved.json()["ai_answers"], saved.json()["fallback_target_name"]) == (False, "Front desk")
        foreign = await alice.api("POST", "/api/callback-settings",
                                  json={"ai_answers": True, "fallback_target_id": bobs.id})
        assert foreign.status_code == 400 and "your transfer targets" in foreign.json()["error"]["message"]
        bad = await alice.api("POST", "/api/callback-settings", json={"ai_answers": "yes"})
        assert bad.status_code == 400
        assert (await alice.api("GET", "/api/callback-settings")).json()["fallback_target_id"] == desk["id"]
        page = await alice.http.get("/callbacks")
        assert page.status_code == 200 and "ring Front desk" in page.text and "Bob" not in page.text
    finally:
        await alice.aclose()


async def test_the_plan_page_shows_each_message_as_it_will_be_spoken(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions, CALLBACK_NUMBER="+14155550100")
    alice_id = await add_user(runtime, "alice")
    plan = validate_plan(a_plan(voicemail={"action": "leave_message", "message": MESSAGE})).plan
    async with sessions() as session, session.begin():
        chat = await repo.create_chat_session(session, alice_id)
        chat.plan = plan
        chat_id = chat.id
    alice = WebClient(create_app(runtime))
    await alice.login("alice")
    try:
        page = (await alice.http.get(f"/chat/{chat_id}")).text
    finally:
        await alice.aclose()
    spoken = voicemail_script(MESSAGE, "+14155550100").replace("'", "&#39;")
    assert "leave a message after the beep" in page and page.count(spoken) == 2   # both targets


async def test_without_amd_the_call_ai_hears_the_machine_and_leaves_the_plans_message(scene, sessions, realtime):
    """The model's own verdict: told the plan, it says the message after the beep and ends with voicemail_left,
    which becomes the call's outcome (the analyzer reads it)."""
    from tests.doubles.audiosocket_calls import asterisk_call, audiosocket_server, seed_call
    from tests.doubles.fake_realtime import FakeResponse

    realtime.greeting = FakeResponse(function_call=("end_call", {"outcome": "voicemail_left", "summary": "left"}))
    seeded = await seed_call(sessions)
    async with sessions() as db, db.begin():
        task = await repo.get_task(db, seeded.user_id, seeded.task_id)
        task.voicemail_message = MESSAGE
        (await repo.get_campaign(db, seeded.user_id, task.campaign_id)).voicemail_action = \
            VoicemailAction.LEAVE_MESSAGE
    async with audiosocket_server(scene(CALLBACK_NUMBER="+14155550100")) as server, \
            asterisk_call(server, seeded.as_uuid) as asterisk:
        model = await realtime.wait_for_connection()
        await asterisk.wait_hangup(timeout=5)
    instructions = model.session_config()["instructions"]
    assert "wait for the beep" in instructions and voicemail_script(MESSAGE, "+14155550100") in instructions
    async with sessions() as db:
        call = await repo.get_call(db, seeded.user_id, seeded.call_id)
    assert call.outcome is CallOutcome.VOICEMAIL_LEFT
