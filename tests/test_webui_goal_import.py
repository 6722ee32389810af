"""CSV imports choose the campaign's goal too (default each_target); the assistant must state the goal of the plans
it submits, and its prompt tells it to ask when the request is ambiguous."""

from __future__ import annotations

import pytest_asyncio

from ami_controller.scheduler import claim_due_tasks
from db import repo
from db.models import CampaignGoal
from opendeep.campaign_goal import keep_goals
from tests.doubles.fake_openai import FakeOpenAI
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from tests.test_webui_plan_csv import a_plan
from webui.app import create_app

CSV = "name,phone_number\nBright Smile,+14155550101\nOak Dental,+14155550102\nCastro Smiles,+14155550103\n"


@pytest_asyncio.fixture
async def alice(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    user_id = await add_user(runtime, "alice")
    client = WebClient(create_app(runtime))
    await client.login("alice")
    yield runtime, client, user_id
    await client.aclose()


async def _tasks(runtime, user_id, campaign_id):
    async with runtime.sessions() as session:
        return list(await repo.list_tasks(session, user_id, campaign_id))


async def test_an_until_one_succeeds_import_calls_the_rows_in_order(alice):
    runtime, client, user_id = alice
    response = await client.api("POST", "/api/campaigns/import?name=One%20cleaning&goal_type=until_one_succeeds",
                                content=CSV, headers={"content-type": "text/csv"})
    assert response.status_code == 201, response.text
    campaign_id, task_ids = response.json()["campaign_id"], response.json()["task_ids"]
    tasks = await _tasks(runtime, user_id, campaign_id)
    assert all(task.held for task in tasks)     # no chunk is claimed before the keeper gives it its turn
    async with runtime.sessions() as session:
        assert await claim_due_tasks(session, claimer="t", limit=10) == []
        assert (await repo.get_campaign(session, user_id, campaign_id)).goal_type is CampaignGoal.UNTIL_ONE_SUCCEEDS
    assert (await keep_goals(runtime.sessions)).released == task_ids[:1]
    async with runtime.sessions() as session:
        assert [t.id for t in await claim_due_tasks(session, claimer="t", limit=10)] == task_ids[:1]
    # Targets added later wait behind the others.
    added = await client.api("POST", f"/api/campaigns/{campaign_id}/targets", headers={"content-type": "text/csv"},
                             content="name,phone_number\nNoe Valley Dental,+14155550104\n")
    assert added.status_code == 201
    (new,) = [t for t in await _tasks(runtime, user_id, campaign_id) if t.id == added.json()["task_ids"][0]]
    assert new.held


async def test_the_default_goal_is_each_target_and_a_bad_one_is_refused(alice):
    runtime, client, user_id = alice
    response = await client.api("POST", "/api/campaigns/import?name=Quotes", content=CSV,
                                headers={"content-type": "text/csv"})
    assert response.status_code == 201
    assert not any(t.held for t in await _tasks(runtime, user_id, response.json()["campaign_id"]))
    bad = await client.api("POST", "/api/campaigns/import?name=Quotes&goal_type=best", content=CSV,
                           headers={"content-type": "text/csv"})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == ("goal_type: 'best' is not a goal; use one of each_target, "
                                              "until_one_succeeds, best_of")
    async with runtime.sessions() as session:
        assert len(await repo.list_campaigns(session, user_id)) == 1


async def test_the_import_form_offers_the_goal(alice):
    runtime, client, user_id = alice
    form = (await client.http.get("/campaigns/import")).text
    assert 'name="goal_type" value="each_target" checked' in form and "Until one succeeds" in form
    response = await client.form("/campaigns/import", {"name": "One cleaning", "goal_type": "until_one_succeeds"},
                                 files={"file": ("t.csv", CSV.encode(), "text/csv")})
    assert response.status_code == 303
    campaign_id = int(response.headers["location"].rsplit("/", 1)[1])
    page = (await client.http.get(f"/campaigns/{campaign_id}")).text
    assert "Until one succeeds" in page
    bad = await client.form("/campaigns/import", {"name": "x", "goal_type": "all"},
                            files={"file": ("t.csv", CSV.encode(), "text/csv")})
    assert bad.status_code == 400 and "is not a goal" in bad.text


async def test_the_assistant_must_state_the_goal_and_is_told_to_ask_when_unclear(settings_env, engine, sessions):
    llm = FakeOpenAI()
    await llm.start()
    runtime = make_runtime(settings_env, engine, sessions, OPENAI_BASE_URL=llm.base_url, LLM_TIMEOUT_SECONDS="5")
    await add_user(runtime, "alice")
    client = WebClient(create_app(runtime))
    try:
        await client.login("alice")
        chat_id = (await client.api("POST", "/api/chats", {})).json()["id"]
        llm.queue_reply(tool_calls=[{"name": "submit_campaign_plan", "arguments": a_plan()}])   # no goal_type
        llm.queue_reply(content="Do you want one appointment in total, or one with each?",
                        tool_calls=[{"name": "ask_follow_up_questions",
                                     "arguments": {"questions": ["One appointment in total, or one with each?"]}}])
        body = (await client.api("POST", f"/api/chats/{chat_id}/messages",
                                 {"text": "Call these two dentists and book me a cleaning"})).json()
        assert body["plan"] is None and body["questions"] == ["One appointment in total, or one with each?"]
        system = llm.requests[0]["messages"][0]["content"]
        assert "until_one_succeeds" in system and "one appointment in" in system and "ask with" in system
        refused = llm.requests[1]["messages"][-1]["content"]
        assert "goal_type: state each_target, until_one_succeeds or best_of" in refused
        schema = next(t for t in llm.requests[0]["tools"] if t["function"]["name"] == "submit_campaign_plan")
        assert schema["function"]["parameters"]["properties"]["goal_type"]["enum"] == [
            "each_target", "until_one_succeeds", "best_of"]
    finally:
        await client.aclose()
        await llm.stop()
