"""Editing a campaign (name, calling window, attempts, caller ID) and "call now" / "retry now" per task, through the
JSON API and the campaign page's forms: validated with clear errors, tenant-scoped, CSRF-protected, and never a
second dial of a task already being called (the scheduler's real claim query is the judge)."""

from __future__ import annotations

from datetime import timedelta

import pytest_asyncio
from sqlalchemy import update

from ami_controller.initiator import dispatch_due_tasks
from ami_controller.scheduler import claim_due_tasks
from db import repo
from db.models import Call, CallStatus, CampaignStatus, Task, TaskStatus
from db.types import utcnow
from opendeep.phone import callee_timezone
from tests.doubles.fake_ami import pairs_get
from tests.doubles.fake_openai import always_open_window
from tests.doubles.task_state import put_task
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from tests.test_ami_calls import fake, world  # noqa: F401  (fixtures: a FakeAmi and a connected controller)
from tests.test_webui_plan_csv import a_plan
from webui.app import create_app
from webui.orchestrator import confirm_plan

NUMBER = "+14155550101"


@pytest_asyncio.fixture
async def two_users(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    alice_id = await add_user(runtime, "alice")
    await add_user(runtime, "bob")
    alice, bob = WebClient(create_app(runtime)), WebClient(create_app(runtime))
    await alice.login("alice")
    await bob.login("bob")
    yield runtime, alice, bob, alice_id
    await alice.aclose()
    await bob.aclose()


async def _campaign(runtime, user_id, **changes):
    plan = a_plan(calling_window=always_open_window(NUMBER), **changes)
    confirmation = await confirm_plan(runtime.sessions, user_id, plan, "k")
    return confirmation.campaign.id, confirmation.task_ids


async def _task(runtime, task_id) -> Task:
    async with runtime.sessions() as session:
        return await session.get(Task, task_id)


async def _claim(runtime) -> list[int]:
    async with runtime.sessions() as session:
        return [t.id for t in await claim_due_tasks(session, claimer="t", limit=10)]


async def test_the_api_edits_name_window_attempts_and_caller_id(two_users):
    runtime, alice, _, alice_id = two_users
    campaign_id, (first, second) = await _campaign(runtime, alice_id)
    async with runtime.sessions() as session, session.begin():
        await put_task(session, alice_id, second, TaskStatus.FAILED, reason="wrong number")
    response = await alice.api("PATCH", f"/api/campaigns/{campaign_id}", {
        "name": "  Cleaning, one dentist ", "calling_window": "08:30-18:00", "max_attempts": 5,
        "caller_id": "Acme Dental <+1 415 555 0199>"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["campaign"]["name"] == "Cleaning, one dentist"
    assert (body["campaign"]["window_start"], body["campaign"]["window_end"]) == ("08:30", "18:00")
    assert body["campaign"]["caller_id"] == '"Acme Dental" <+14155550199>'
    assert "up to 5 attempt(s) for 1 unfinished task(s)" in body["message"]
    assert (await _task(runtime, first)).max_attempts == 5
    assert (await _task(runtime, second)).max_attempts == 2   # finished: its record stays
    # Empty values go back to the defaults.
    reset = await alice.api("PATCH", f"/api/campaigns/{campaign_id}", {"calling_window": "", "caller_id": ""})
    assert reset.json()["campaign"]["window_start"] is None and reset.json()["campaign"]["caller_id"] is None


async def test_bad_edits_are_refused_with_every_reason_and_change_nothing(two_users):
    runtime, alice, _, alice_id = two_users
    campaign_id, _ = await _campaign(runtime, alice_id)
    response = await alice.api("PATCH", f"/api/campaigns/{campaign_id}", {
        "name": "", "calling_window": "9-5", "max_attempts": 0, "caller_id": "call me", "status": "paused"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_field" and error["message"].startswith("nothing was changed")
    fields = [detail.split(":")[0] for detail in error["details"]]
    assert fields == ["status", "name", "calling_window", "max_attempts", "caller_id"]
    assert "write it as 09:00-17:00" in error["message"] and "from 1 to 10" in error["message"]
    assert (await alice.api("PATCH", f"/api/campaigns/{campaign_id}", {})).status_code == 422
    async with runtime.sessions() as session:
        campaign = await repo.get_campaign(session, alice_id, campaign_id)
    assert campaign.name == "Dental cleaning" and campaign.caller_id is None


async def test_a_finished_campaign_can_only_be_renamed(two_users):
    runtime, alice, _, alice_id = two_users
    campaign_id, _ = await _campaign(runtime, alice_id)
    assert (await alice.api("POST", f"/api/campaigns/{campaign_id}/cancel")).status_code == 200
    refused = await alice.api("PATCH", f"/api/campaigns/{campaign_id}", {"max_attempts": 3})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "campaign_finished"
    renamed = await alice.api("PATCH", f"/api/campaigns/{campaign_id}", {"name": "Old cleaning"})
    assert renamed.status_code == 200 and renamed.json()["campaign"]["name"] == "Old cleaning"


async def test_another_tenant_cannot_see_edit_or_call_and_csrf_is_required(two_users):
    runtime, alice, bob, alice_id = two_users
    campaign_id, (task_id, _) = await _campaign(runtime, alice_id)
    assert (await bob.api("PATCH", f"/api/campaigns/{campaign_id}", {"name": "mine"})).status_code == 404
    assert (await bob.api("POST", f"/api/tasks/{task_id}/call-now")).status_code == 404
    assert (await bob.api("POST", f"/api/tasks/{task_id}/retry-now")).status_code == 404
    assert (await bob.form(f"/campaigns/{campaign_id}/edit", {"name": "mine"})).status_code == 404
    assert (await bob.form(f"/tasks/{task_id}/call-now")).status_code == 404
    no_token = await alice.http.patch(f"/api/campaigns/{campaign_id}", json={"name": "x"})
    assert no_token.status_code == 403
    async with runtime.sessions() as session:
        assert (await repo.get_campaign(session, alice_id, campaign_id)).name == "Dental cleaning"


async def test_call_now_makes_a_waiting_task_due_once_and_a_dialing_task_cannot_be_called_again(two_users):
    runtime, alice, _, alice_id = two_users
    _, (first, second) = await _campaign(runtime, alice_id)
    later = utcnow() + timedelta(hours=2)
    async with runtime.sessions() as session, session.begin():
        await session.execute(update(Task).values(next_action_time=later, status=TaskStatus.RETRY_SCHEDULED,
                                                  attempt_count=1))
    assert await _claim(runtime) == []
    response = await alice.api("POST", f"/api/tasks/{first}/call-now")
    assert response.status_code == 200 and response.json()["message"].endswith("will be called within seconds")
    assert await _claim(runtime) == [first]          # due now: claimed once ...
    again = await alice.api("POST", f"/api/tasks/{first}/call-now")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_dialing"
    assert await _claim(runtime) == []                # ... and never twice
    assert (await _task(runtime, first)).attempt_count == 2
    # A call row still open (ringing) also counts as dialing, whatever the task says.
    async with runtime.sessions() as session, session.begin():
        session.add(Call(user_id=alice_id, task_id=second, attempt_number=2, status=CallStatus.RINGING,
                         dialed_number=NUMBER))
    ringing = await alice.api("POST", f"/api/tasks/{second}/call-now")
    assert ringing.status_code == 409 and ringing.json()["error"]["code"] == "already_dialing"


async def test_call_now_on_a_held_for_review_task_with_no_attempts_left_gives_it_one_more(two_users):
    runtime, alice, _, alice_id = two_users
    _, (first, second) = await _campaign(runtime, alice_id)
    async with runtime.sessions() as session, session.begin():
        await session.execute(update(Task).where(Task.id == first).values(
            status=TaskStatus.ON_HOLD, attempt_count=2, status_reason="needs your review"))
        await session.execute(update(Task).where(Task.id == second).values(status=TaskStatus.COMPLETED))
    response = await alice.api("POST", f"/api/tasks/{first}/call-now")
    assert response.status_code == 200, response.text
    assert (await _task(runtime, first)).max_attempts == 3
    assert await _claim(runtime) == [first]


async def test_retry_now_gives_a_finished_task_one_more_attempt(two_users):
    runtime, alice, _, alice_id = two_users
    _, (first, second) = await _campaign(runtime, alice_id)
    async with runtime.sessions() as session, session.begin():
        await session.execute(update(Task).where(Task.id == first).values(status=TaskStatus.FAILED, attempt_count=2,
                                                                          status_reason="no answer twice"))
        await session.execute(update(Task).where(Task.id == second).values(status=TaskStatus.COMPLETED))
    call_now = await alice.api("POST", f"/api/tasks/{first}/call-now")
    assert call_now.status_code == 409 and "use 'retry now'" in call_now.json()["error"]["message"]
    retried = await alice.api("POST", f"/api/tasks/{first}/retry-now")
    assert retried.status_code == 200, retried.text
    task = await _task(runtime, first)
    assert (task.status, task.max_attempts, task.status_reason) == (TaskStatus.PENDING, 3, "retry requested by you")
    assert await _claim(runtime) == [first]
    not_finished = await alice.api("POST", f"/api/tasks/{first}/retry-now")
    assert not_finished.status_code == 409 and not_finished.json()["error"]["code"] == "already_dialing"


async def test_the_rules_still_apply_dnd_paused_and_finished_campaigns_and_the_window(two_users):
    runtime, alice, _, alice_id = two_users
    campaign_id, (first, second) = await _campaign(runtime, alice_id)
    assert (await alice.api("POST", "/api/dnd", {"phone_number": NUMBER})).status_code in (200, 201)
    dnd = await alice.api("POST", f"/api/tasks/{first}/call-now")
    assert dnd.status_code == 409 and dnd.json()["error"]["code"] == "do_not_call"
    # A window closed now: the task is due, the scheduler keeps to the window, and the answer says when.
    zone = callee_timezone(NUMBER)
    local = utcnow().astimezone(zone)
    start, end = (local + timedelta(hours=2)).strftime("%H:%M"), (local + timedelta(hours=3)).strftime("%H:%M")
    assert (await alice.api("PATCH", f"/api/campaigns/{campaign_id}",
                            {"calling_window": f"{start}-{end}"})).status_code == 200
    async with runtime.sessions() as session, session.begin():
        await session.execute(update(Task).where(Task.id == second).values(next_action_time=utcnow()
                                                                           + timedelta(days=1)))
    outside = await alice.api("POST", f"/api/tasks/{second}/call-now")
    assert outside.status_code == 200 and "outside the calling window" in outside.json()["message"]
    assert "(callee's time)" in outside.json()["message"]
    assert (await alice.api("POST", f"/api/campaigns/{campaign_id}/pause")).status_code == 200
    paused = await alice.api("POST", f"/api/tasks/{second}/call-now")
    assert paused.status_code == 409 and paused.json()["error"]["code"] == "campaign_paused"
    assert (await alice.api("POST", f"/api/campaigns/{campaign_id}/cancel")).status_code == 200
    finished = await alice.api("POST", f"/api/tasks/{second}/retry-now")
    assert finished.status_code == 409 and finished.json()["error"]["code"] == "campaign_finished"


async def test_the_campaign_page_has_the_edit_form_and_call_now_buttons(two_users):
    runtime, alice, _, alice_id = two_users
    campaign_id, (first, _) = await _campaign(runtime, alice_id, goal_type="until_one_succeeds")
    page = (await alice.http.get(f"/campaigns/{campaign_id}")).text
    assert 'id="campaign-edit"' in page and f'action="/campaigns/{campaign_id}/edit"' in page
    assert f'action="/tasks/{first}/call-now"' in page and "Until one succeeds" in page
    assert "waits its turn" in page
    saved = await alice.form(f"/campaigns/{campaign_id}/edit", {"name": "Renamed", "calling_window": "",
                                                                "max_attempts": "", "caller_id": ""})
    assert saved.status_code == 303 and saved.headers["location"] == f"/campaigns/{campaign_id}"
    page = (await alice.http.get(f"/campaigns/{campaign_id}")).text
    assert "Renamed" in page and "renamed to &#39;Renamed&#39;" in page
    bad = await alice.form(f"/campaigns/{campaign_id}/edit", {"name": "Renamed", "calling_window": "25:00-26:00"})
    assert bad.status_code == 303
    assert "calling_window:" in (await alice.http.get(f"/campaigns/{campaign_id}")).text
    no_token = await alice.http.post(f"/campaigns/{campaign_id}/edit", data={"name": "x"})
    assert no_token.status_code == 403


async def test_the_campaigns_caller_id_goes_into_its_originate(world, fake, two_users):  # noqa: F811
    runtime, alice, _, alice_id = two_users
    campaign_id, (first, second) = await _campaign(runtime, alice_id)
    assert (await alice.api("PATCH", f"/api/campaigns/{campaign_id}",
                            {"caller_id": "Acme <+14155550199>"})).status_code == 200
    async with runtime.sessions() as session, session.begin():
        await session.execute(update(Task).where(Task.id == second).values(status=TaskStatus.CANCELLED))
    report = await dispatch_due_tasks(runtime.sessions, world.settings, world.controller, claimer="t",
                                      now=utcnow())
    assert len(report.dialed) == 1
    (originate,) = fake.actions_named("Originate")
    assert pairs_get(originate, "CallerID") == '"Acme" <+14155550199>'
    async with runtime.sessions() as session:
        assert (await repo.get_campaign(session, alice_id, campaign_id)).status is CampaignStatus.ACTIVE
