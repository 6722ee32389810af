"""A campaign budget through the whole product, as `make demo` runs it: `opendeep serve` as a subprocess with its
real sockets, the Asterisk simulator running the shipped dialplan, and the scripted models, whose realtime
session reports its usage in `response.done` like the real API.

Three targets, one call at a time, a budget the first call's greeting spends: the first call is not cut and ends
on its own, the campaign shows "paused: budget spent", its owner is notified, and no second Originate is sent
however long the scheduler polls. Raising the budget and resuming dials the other two.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.doubles.ami_helpers import eventually
from tests.doubles.fake_openai import ScriptedModels
from tests.doubles.sim_stack import simulator_stack

TARGETS = (("Bright Smile Dental", "+14155550101"), ("Golden Gate Dentistry", "+14155550102"),
           ("Oak Dental", "+14155550103"))
USER, PASSWORD = "alice", "correct horse battery staple"


@pytest.fixture
async def stack(tmp_path):
    models = ScriptedModels(targets=TARGETS, ask_user=False)
    async with simulator_stack(tmp_path, models, user=USER, password=PASSWORD, talk_seconds=25, database="budget.db",
                               env={"MAX_CONCURRENT_CALLS": "1", "MAX_CONCURRENT_CALLS_PER_USER": "1"}
                               ) as (serve, sim, fake):
        yield serve, sim, fake, models


async def _campaign(http: httpx.AsyncClient, campaign_id: int) -> dict:
    return (await http.get(f"/api/campaigns/{campaign_id}")).json()


async def _paused_for_budget(http: httpx.AsyncClient, campaign_id: int):
    detail = await _campaign(http, campaign_id)
    return detail if detail["campaign"]["pause_reason"] == "budget_spent" else None


async def _tasks_done(http: httpx.AsyncClient, campaign_id: int, count: int):
    detail = await _campaign(http, campaign_id)
    done = [task for task in detail["tasks"] if task["terminal"]]
    return detail if len(done) >= count else None


async def test_a_spent_budget_pauses_dialing_without_cutting_the_live_call(stack):
    serve, sim, fake, models = stack
    async with httpx.AsyncClient(base_url=serve.web_url, timeout=10) as http:
        csrf = (await http.get("/api/session")).json()["csrf_token"]
        login = await http.post("/api/login", json={"username": USER, "password": PASSWORD},
                                headers={"x-csrf-token": csrf})
        headers = {"x-csrf-token": login.json()["csrf_token"]}
        plan = {**models.plan("Book cleanings"), "budget_usd": 0.001}
        created = await http.post("/api/campaigns", json={"plan": plan, "source_key": "budget"}, headers=headers)
        assert created.status_code == 201, created.text
        campaign_id = created.json()["campaign_id"]

        first = await sim.wait_for_call(timeout=15)
        session = await fake.realtime.wait_for_connection(timeout=15)
        paused = await eventually(lambda: _paused_for_budget(http, campaign_id), 15, 0.1,
                                  what="the campaign paused for its budget")
        assert paused["campaign"]["status"] == "paused"
        # The live call is not cut: the AI finishes what it says and ends the call itself (end_call).
        await first.wait_done(timeout=20)
        assert first.app_hung_up and first.local.variables["DIALSTATUS"] == "ANSWER"
        detail = await eventually(lambda: _tasks_done(http, campaign_id, 1), 20, 0.1, what="the first task done")
        assert [task["status"] for task in detail["tasks"]].count("completed") == 1

        # The scheduler polls every 0.2 s: forty polls later, still one Originate.
        await asyncio.sleep(8)
        assert len(sim.calls) == 1

        costs = (await http.get(f"/api/campaigns/{campaign_id}/costs")).json()
        kinds = {line["kind"] for line in costs["lines"]}
        assert {"call_ai", "analyzer"} <= kinds and costs["budget_spent"] and costs["paused_for_budget"]
        reported = sum(usage["total_tokens"] for usage in session.usage_sent if "input_token_details" in usage
                       and "cached_tokens" in usage["input_token_details"])
        ai = [line for line in costs["lines"] if line["kind"] == "call_ai"]
        assert sum(line[key] for line in ai for key in ("text_in", "text_cached_in", "text_out", "audio_in",
                                                       "audio_cached_in", "audio_out")) == reported
        notes = (await http.get("/api/notifications")).json()["notifications"]
        assert [note["kind"] for note in notes].count("campaign.budget_spent") == 1
        refused = await http.post(f"/api/campaigns/{campaign_id}/resume", headers=headers)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "budget_spent"

        # Raising the budget lets the user resume: the two other targets are called.
        raised = await http.put(f"/api/campaigns/{campaign_id}/budget", json={"budget_usd": 50}, headers=headers)
        assert raised.status_code == 200, raised.text
        resumed = await http.post(f"/api/campaigns/{campaign_id}/resume", headers=headers)
        assert resumed.status_code == 200, resumed.text
        calls = await sim.wait_for_calls(3, timeout=60)
        assert sorted(call.variables["OPENDEEP_NUMBER"] for call in calls) == sorted(n for _, n in TARGETS)
        await eventually(lambda: _tasks_done(http, campaign_id, 3), 30, 0.1, what="every task done")
