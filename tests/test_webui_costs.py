"""Costs and budgets in the web UI and the JSON API: the call, campaign and month views, a budget from the plan,
the CSV import and the budget form, and no tenant ever seeing or changing another's costs or budgets."""

from __future__ import annotations

import pytest_asyncio

from db import costs, repo
from db.models import Call, CallStatus, CampaignStatus, UsageKind
from db.types import utcnow
from opendeep.prices import TokenUsage, price_usage
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from tests.test_webui_plan_csv import a_plan
from webui.app import create_app
from webui.orchestrator import confirm_plan


@pytest_asyncio.fixture
async def two_tenants(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    alice_id, bob_id = await add_user(runtime, "alice"), await add_user(runtime, "bob")
    alice, bob = WebClient(create_app(runtime)), WebClient(create_app(runtime))
    await alice.login("alice")
    await bob.login("bob")
    yield runtime, (alice, alice_id), (bob, bob_id)
    await alice.aclose()
    await bob.aclose()


async def spend(runtime, user_id: int, campaign_id: int, task_id: int) -> tuple[int, int]:
    """A call of the task that used the call AI (priced by the settings) and 90 s of trunk; (call id, its cost)."""
    usage = TokenUsage(text_in=1200, text_cached_in=640, text_out=40, audio_in=300, audio_cached_in=100,
                       audio_out=500)
    async with runtime.sessions() as db, db.begin():
        call = Call(user_id=user_id, task_id=task_id, attempt_number=1, dialed_number="+14155550101",
                    status=CallStatus.ENDED, answered_at=utcnow(), ended_at=utcnow())
        db.add(call)
        await db.flush()
        scope = costs.Scope(user_id, campaign_id, task_id, call.id)
        priced = price_usage(runtime.settings.model_prices, "gpt-realtime", usage)
        await costs.record_usage(db, scope, costs.UsageEntry(UsageKind.CALL_AI, "gpt-realtime", usage, priced))
        trunk = price_usage(runtime.settings.model_prices, "gpt-realtime", TokenUsage())   # 0: TRUNK_PRICE 0
        await costs.record_usage(db, scope, costs.UsageEntry(UsageKind.TRUNK, "trunk", TokenUsage(), trunk,
                                                             seconds=90))
        return call.id, priced.cost_microusd


async def test_costs_show_per_call_task_campaign_and_month(two_tenants):
    runtime, (alice, alice_id), _ = two_tenants
    confirmation = await confirm_plan(runtime.sessions, alice_id, a_plan(budget_usd=5), "k")
    campaign_id, task_id = confirmation.campaign.id, confirmation.task_ids[0]
    call_id, cost = await spend(runtime, alice_id, campaign_id, task_id)

    call = (await alice.api("GET", f"/api/calls/{call_id}/costs")).json()
    assert call["total_microusd"] == cost and call["trunk_seconds"] == 90
    assert [(line["kind"], line["audio_out"]) for line in call["lines"]] == [("call_ai", 500), ("trunk", 0)]
    assert (await alice.api("GET", f"/api/calls/{call_id}")).json()["costs"]["total_microusd"] == cost
    assert (await alice.api("GET", f"/api/tasks/{task_id}/costs")).json()["total_microusd"] == cost
    campaign = (await alice.api("GET", f"/api/campaigns/{campaign_id}/costs")).json()
    assert (campaign["budget_microusd"], campaign["spent_microusd"], campaign["budget_spent"]) == (5_000_000, cost,
                                                                                                  False)
    assert campaign["tasks"] == {str(task_id): cost}
    month = (await alice.api("GET", "/api/usage")).json()
    assert month["total_microusd"] == cost and month["campaigns"][0]["campaign_id"] == campaign_id

    page = (await alice.http.get(f"/campaigns/{campaign_id}")).text
    assert 'id="costs"' in page and f"${cost / 1e6:.4f}" in page and "$5.00" in page
    assert "1.5 trunk minutes" in page
    assert f"${cost / 1e6:.4f}" in (await alice.http.get(f"/calls/{call_id}")).text
    usage_page = (await alice.http.get("/usage")).text
    assert f"${cost / 1e6:.4f}" in usage_page and "Bright Smile" not in usage_page and "Dental cleaning" in usage_page
    assert (await alice.api("GET", "/api/usage?month=2026-13")).status_code == 400


async def test_a_budget_comes_from_the_plan_the_csv_import_or_the_budget_form(two_tenants):
    runtime, (alice, alice_id), _ = two_tenants
    confirmation = await confirm_plan(runtime.sessions, alice_id, a_plan(budget_usd=12.5), "k")
    assert confirmation.campaign.budget_microusd == 12_500_000
    csv = "name,phone_number\nOak,+14155550103\n"
    imported = await alice.api("POST", "/api/campaigns/import?name=Imported&budget_usd=3.25", content=csv,
                               headers={"content-type": "text/csv"})
    assert imported.status_code == 201
    bad = await alice.api("POST", "/api/campaigns/import?name=Bad&budget_usd=-3", content=csv,
                          headers={"content-type": "text/csv"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_budget"
    form = await alice.form("/campaigns/import", {"name": "Form", "goal": "g", "budget_usd": "$7"},
                            files={"file": ("t.csv", csv.encode(), "text/csv")})
    assert form.status_code == 303
    async with runtime.sessions() as db:
        budgets = {c.name: c.budget_microusd for c in await repo.list_campaigns(db, alice_id)}
    assert budgets == {"Dental cleaning": 12_500_000, "Imported": 3_250_000, "Form": 7_000_000}

    campaign_id = confirmation.campaign.id
    await alice.form(f"/campaigns/{campaign_id}/budget", {"budget_usd": "20"})
    assert "Budget set to $20.00" in (await alice.http.get(f"/campaigns/{campaign_id}")).text
    refused = await alice.form(f"/campaigns/{campaign_id}/budget", {"budget_usd": "lots"})
    assert refused.status_code == 303
    assert "budget_usd: expected an amount in USD" in (await alice.http.get(f"/campaigns/{campaign_id}")).text
    removed = await alice.api("PUT", f"/api/campaigns/{campaign_id}/budget", {"budget_usd": None})
    assert removed.status_code == 200 and removed.json()["budget_microusd"] is None


async def test_a_spent_budget_shows_and_resume_waits_for_a_higher_one(two_tenants):
    runtime, (alice, alice_id), _ = two_tenants
    confirmation = await confirm_plan(runtime.sessions, alice_id, a_plan(budget_usd=0.001), "k")
    campaign_id = confirmation.campaign.id
    await spend(runtime, alice_id, campaign_id, confirmation.task_ids[0])
    page = (await alice.http.get(f"/campaigns/{campaign_id}")).text
    assert "Paused: budget spent" in page
    assert "paused: budget spent" in (await alice.http.get("/campaigns")).text
    notes = (await alice.api("GET", "/api/notifications")).json()["notifications"]
    assert notes[-1]["kind"] == "campaign.budget_spent" and "raise the budget to resume" in notes[-1]["message"]
    refused = await alice.api("POST", f"/api/campaigns/{campaign_id}/resume")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "budget_spent"
    raised = await alice.api("PUT", f"/api/campaigns/{campaign_id}/budget", {"budget_usd": 10})
    assert raised.status_code == 200 and "resume the campaign" in raised.json()["message"]
    resumed = await alice.api("POST", f"/api/campaigns/{campaign_id}/resume")
    assert resumed.status_code == 200
    campaign = (await alice.api("GET", f"/api/campaigns/{campaign_id}")).json()["campaign"]
    assert (campaign["status"], campaign["pause_reason"]) == (CampaignStatus.ACTIVE.value, None)


async def test_no_tenant_sees_or_sets_another_tenants_costs_or_budget(two_tenants):
    runtime, (alice, alice_id), (bob, bob_id) = two_tenants
    confirmation = await confirm_plan(runtime.sessions, alice_id, a_plan(budget_usd=5), "k")
    campaign_id, task_id = confirmation.campaign.id, confirmation.task_ids[0]
    call_id, cost = await spend(runtime, alice_id, campaign_id, task_id)
    for path in (f"/api/calls/{call_id}/costs", f"/api/tasks/{task_id}/costs", f"/api/campaigns/{campaign_id}/costs"):
        answer = await bob.api("GET", path)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found", path
    assert (await bob.api("PUT", f"/api/campaigns/{campaign_id}/budget", {"budget_usd": 1})).status_code == 404
    assert (await bob.form(f"/campaigns/{campaign_id}/budget", {"budget_usd": "1"})).status_code == 404
    month = (await bob.api("GET", "/api/usage")).json()
    assert month["total_microusd"] == 0 and month["lines"] == [] and month["campaigns"] == []
    bob_page = (await bob.http.get("/usage")).text
    assert "Dental cleaning" not in bob_page and f"${cost / 1e6:.4f}" not in bob_page
    async with runtime.sessions() as db:   # the repository functions themselves are scoped too
        assert await costs.campaign_costs(db, bob_id, campaign_id) is None
        assert (await costs.call_costs(db, bob_id, call_id))["lines"] == []
        assert (await costs.task_costs(db, bob_id, task_id))["lines"] == []
        assert await costs.call_scope(db, bob_id, call_id) is None
        assert (await repo.get_campaign(db, alice_id, campaign_id)).budget_microusd == 5_000_000
    assert (await alice.api("GET", "/api/usage")).json()["total_microusd"] == cost


async def test_the_budget_notification_is_marked_read_by_its_owner_only(two_tenants):
    runtime, (alice, alice_id), (bob, _) = two_tenants
    confirmation = await confirm_plan(runtime.sessions, alice_id, a_plan(budget_usd=0.001), "k")
    await spend(runtime, alice_id, confirmation.campaign.id, confirmation.task_ids[0])
    note = (await alice.api("GET", "/api/notifications")).json()["notifications"][-1]
    assert (note["kind"], note["read"]) == ("campaign.budget_spent", False)
    refused = await bob.api("POST", f"/api/notifications/{note['id']}/read")   # not his: as if it did not exist
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    assert (await alice.api("GET", "/api/notifications")).json()["notifications"][-1]["read"] is False
    for _ in range(2):   # reading it again is no error
        marked = await alice.api("POST", f"/api/notifications/{note['id']}/read")
        assert marked.status_code == 200 and marked.json() == {"id": note["id"], "read": True}
    assert (await alice.api("GET", "/api/notifications")).json()["notifications"][-1]["read"] is True
    assert (await alice.api("POST", "/api/notifications/99999999999999999999/read")).status_code == 404
