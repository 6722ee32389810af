"""A campaign's goal, end to end: `opendeep serve` as a subprocess, the Asterisk simulator running the shipped
dialplan (tests/doubles/asterisk_sim.py), and the scripted models (tests/doubles/fake_openai.py ScriptedModels).

"Call these two dentists and book me a cleaning" is ambiguous (one appointment, or one with each?): the assistant
asks, the user says "just one", the plan's goal is until_one_succeeds. The first dentist is called, books; the
second is cancelled with that reason and never dialed (the simulator sees one Originate), and the summary reports
against the goal. With two calls at once, the one still talking when the other succeeds is wrapped up politely:
the call AI is told to withdraw the request and ends the call itself.
"""

from __future__ import annotations

import httpx
import pytest

from db.models import CampaignStatus, FeedbackStatus, TaskStatus
from tests.doubles.ami_helpers import eventually
from tests.doubles.fake_ami import pairs_get
from tests.doubles.fake_openai import (
    DEMO_TARGETS,
    GOAL_QUESTION,
    WRAPPED_UP,
    ScriptedModels,
    always_open_window,
)
from tests.doubles.sim_stack import simulator_stack
from tests.test_e2e_campaign import PASSWORD, USER, _db_rows, _login, _pending_questions, _summary, _task_if

ANSWER = "Tuesday at 10:00 please."
(FIRST, FIRST_NUMBER), (SECOND, SECOND_NUMBER) = DEMO_TARGETS


@pytest.fixture
async def goal_stack(tmp_path):
    """The scripted models (reading the goal from the chat), the simulator and `opendeep serve`."""
    models = ScriptedModels(DEMO_TARGETS, goal=None)
    async with simulator_stack(tmp_path, models, user=USER, password=PASSWORD, talk_seconds=60, database="goal.db",
                               env={"HITL_TIMEOUT_SECONDS": "60", "SCHEDULER_POLL_SECONDS": "0.2"}
                               ) as (serve, sim, fake):
        yield serve, sim, fake, models


async def _task(http: httpx.AsyncClient, task_id: int) -> dict:
    return (await http.get(f"/api/tasks/{task_id}")).json()


async def _question_of(http: httpx.AsyncClient, task_id: int):
    return next((q for q in await _pending_questions(http) if q["task"]["id"] == task_id), None)


async def test_book_one_cleaning_with_one_of_two_dentists_books_exactly_one_and_says_why_it_stopped(goal_stack):
    serve, sim, fake, models = goal_stack
    async with httpx.AsyncClient(base_url=serve.web_url, timeout=10) as http:
        headers = {"x-csrf-token": await _login(http)}
        chat_id = (await http.post("/api/chats", json={}, headers=headers)).json()["id"]

        # Ambiguous: the assistant asks instead of planning.
        turn = (await http.post(f"/api/chats/{chat_id}/messages", headers=headers,
                                json={"text": "Call these two dentists and book me a cleaning next week."})).json()
        assert turn["plan"] is None and turn["questions"] == [GOAL_QUESTION]
        turn = (await http.post(f"/api/chats/{chat_id}/messages", headers=headers,
                                json={"text": "Just one appointment, whichever can do it first."})).json()
        plan = turn["plan"]
        assert plan["goal_type"] == "until_one_succeeds" and "stop as soon as one books you" in turn["reply"]
        assert [t["name"] for t in plan["targets"]] == [FIRST, SECOND]

        # The plan page shows the goal in words, with the order.
        page = (await http.get(f"/chat/{chat_id}")).text
        assert "Until one succeeds" in page and f"1. {FIRST}, 2. {SECOND}" in page

        confirmed = await http.post(f"/api/chats/{chat_id}/confirm", headers=headers,
                                    json={"source_key": turn["chat"]["source_key"]})
        assert confirmed.status_code == 201, confirmed.text
        campaign_id, (first_id, second_id) = confirmed.json()["campaign_id"], confirmed.json()["task_ids"]
        waiting = await _task(http, second_id)
        assert waiting["held"] and waiting["next_action"].startswith("waits its turn")

        # Only the first dentist is called; the user picks the slot; the booking completes the task.
        call = await sim.wait_for_call(timeout=15)
        assert call.number == FIRST_NUMBER
        question = await eventually(lambda: _question_of(http, first_id), 15, 0.1, what="the first call's question")
        answered = await http.post(f"/api/feedback/{question['request_id']}/answer", json={"answer": ANSWER},
                                   headers=headers)
        assert answered.status_code == 200, answered.text
        await call.wait_done(timeout=20)
        await eventually(lambda: _task_if(http, first_id, "completed"), 20, 0.1, what="the booking")

        # The second dentist is cancelled with the reason, and the campaign is summarized against its goal.
        second = await eventually(lambda: _task_if(http, second_id, "cancelled"), 20, 0.1, what="the cancel")
        assert second["status_reason"] == f"the goal was met with {FIRST}"
        summary = await eventually(lambda: _summary(http, campaign_id), 20, 0.1, what="the summary")
        report = summary["summary"]["goal"]["report"]
        assert report.startswith(f"Goal met with {FIRST} (appointment Tuesday at 10:00).")
        assert report.endswith(f"Did not call {SECOND} because the goal was met.")
        assert summary["summary_text"].startswith(report)
        assert summary["summary"]["calls"].startswith("1 of 2 target(s) called (1 call(s) placed)")
        page = (await http.get(f"/campaigns/{campaign_id}/summary")).text
        assert f"not called: the goal was met with {FIRST}" in page and "task_id" not in page

    # Exactly one call was placed, ever.
    assert len(sim.calls) == 1
    assert [pairs_get(a, "Channel") for a in sim.ami.actions_named("Originate")] == [
        f"Local/{FIRST_NUMBER}@opendeep-outbound/n"]
    campaign, tasks, calls, _, _, _ = await _db_rows(serve.env["DATABASE_URL"], campaign_id)
    assert campaign.status is CampaignStatus.COMPLETED and campaign.goal_met_task_id == first_id
    by_id = {task.id: task for task in tasks}
    assert by_id[second_id].status is TaskStatus.CANCELLED and by_id[second_id].attempt_count == 0
    assert [c.task_id for c in calls] == [first_id]


async def test_two_calls_at_once_the_one_still_talking_is_wrapped_up_politely_when_the_other_succeeds(goal_stack):
    serve, sim, fake, models = goal_stack
    third = ("Castro Smiles", "+14155550103")
    plan = {"name": "One cleaning", "goal": "Book one cleaning next week.", "goal_type": "until_one_succeeds",
            "parallel_calls": 2, "calling_window": always_open_window(FIRST_NUMBER), "max_attempts": 1,
            "targets": [{"name": name, "phone_number": number, "objective": "Book a cleaning next week."}
                        for name, number in (*DEMO_TARGETS, third)]}
    async with httpx.AsyncClient(base_url=serve.web_url, timeout=10) as http:
        headers = {"x-csrf-token": await _login(http)}
        created = await http.post("/api/campaigns", json={"plan": plan, "source_key": "two-at-once"},
                                  headers=headers)
        assert created.status_code == 201, created.text
        campaign_id, (first_id, second_id, third_id) = created.json()["campaign_id"], created.json()["task_ids"]

        calls = [await sim.wait_for_call(timeout=15), await sim.wait_for_call(timeout=15)]
        assert sorted(c.number for c in calls) == [FIRST_NUMBER, SECOND_NUMBER]
        first_call = next(c for c in calls if c.number == FIRST_NUMBER)
        second_call = next(c for c in calls if c.number == SECOND_NUMBER)
        # Both call AIs ask; the user answers the first only. The second keeps the callee on the line.
        await eventually(lambda: _question_of(http, second_id), 15, 0.1, what="the second call's question")
        question = await eventually(lambda: _question_of(http, first_id), 15, 0.1, what="the first call's question")
        await http.post(f"/api/feedback/{question['request_id']}/answer", json={"answer": ANSWER}, headers=headers)
        await first_call.wait_done(timeout=20)
        await eventually(lambda: _task_if(http, first_id, "completed"), 20, 0.1, what="the booking")

        # The second call is wrapped up by its own AI (it withdraws the request and ends the call).
        await second_call.wait_done(timeout=30)
        second = await eventually(lambda: _task_if(http, second_id, "cancelled"), 10, 0.1, what="the cancel")
        assert second["status_reason"] == f"the goal was met with {FIRST}"
        await eventually(lambda: _task_if(http, third_id, "cancelled"), 10, 0.1, what="the third cancelled")
        await eventually(lambda: _summary(http, campaign_id), 30, 0.1, what="the summary")
        summary = await _summary(http, campaign_id)

    report = summary["summary"]["goal"]["report"]
    assert f"Stopped calling {SECOND} because the goal was met." in report
    assert f"Did not call {third[0]} because the goal was met." in report
    assert len(sim.calls) == 2 and second_call.app_hung_up   # the AI's end_call: our hangup frame
    _, tasks, call_rows, events, lines, questions = await _db_rows(serve.env["DATABASE_URL"], campaign_id)
    second_row = next(c for c in call_rows if c.task_id == second_id)
    # The wrapped-up call's open question to the user is closed with it, not left in the UI.
    assert [q.status for q in questions if q.call_id == second_row.id] == [FeedbackStatus.CANCELLED]
    types = [e.type for e in events if e.call_id == second_row.id]
    assert types.index("goal.wrap_up") < types.index("ai.wrap_up") < types.index("ai.end_call")
    ended = next(e for e in events if e.call_id == second_row.id and e.type == "audiosocket.ended")
    assert ended.payload["reason"] == "ai_ended"
    assert any(line.text == WRAPPED_UP for line in lines if line.call_id == second_row.id)
    assert {t.id: t.attempt_count for t in tasks}[third_id] == 0
