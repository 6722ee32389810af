"""Best-of campaigns on SQLite and PostgreSQL (opendeep/best_of.py): the plan states the criterion and who decides;
every target is called for an offer; once all are finished the AI (the fake OpenAI server, reached by the real
SDK) or the user picks the best; the follow-up task to accept it is created with the choice; the summary waits
for the choice and reports against the goal. The user's choice goes through the web app (API and page form), so
tenant scoping, CSRF and bad choices are checked where a user meets them."""

from __future__ import annotations

import json

import pytest
import pytest_asyncio
from sqlalchemy import select, update

from ami_controller.scheduler import claim_due_tasks
from db import repo
from db.models import Campaign, CampaignGoal, CampaignStatus, Notification, Task, TaskStatus
from opendeep.best_of import BestOfKeeper, awaits_choice
from opendeep.events import EventHub
from opendeep.summarizer import CampaignSummarizer
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from webui.app import create_app
from webui.orchestrator import confirm_plan
from webui.plan import validate_plan

SHOPS = [("Shop A", "+14155550101"), ("Shop B", "+14155550102"), ("Shop C", "+14155550103")]


def a_plan(decide="ai", then="book_with_chosen", criterion="lowest price for a 2 kg bag"):
    return {"name": "Coffee beans", "goal": "Buy a 2 kg bag of espresso beans", "goal_type": "best_of",
            "best_of": {"criterion": criterion, "decide": decide, "then": then},
            "calling_window": {"start": "00:00", "end": "23:59"}, "max_attempts": 2,
            "targets": [{"name": name, "phone_number": number, "objective": "Ask the price of a 2 kg bag"}
                        for name, number in SHOPS]}


async def _campaign(sessions, user_id: int, **plan_args) -> tuple[int, list[int]]:
    confirmation = await confirm_plan(sessions, user_id, a_plan(**plan_args), f"key-{user_id}-{plan_args}")
    return confirmation.campaign.id, confirmation.task_ids


async def _user(sessions, name: str) -> int:
    async with sessions() as session:
        user = await repo.create_user(session, name, "x")
        await session.commit()
        return user.id


async def _offers_in(sessions, a: int, b: int, c: int) -> None:
    """What the analyzer writes: A and B made offers (facts extracted), C had none."""
    async with sessions() as session, session.begin():
        for task_id, status, outcome, summary, data in (
                (a, TaskStatus.COMPLETED, "success", "A 2 kg bag costs $14.", {"price": "$14"}),
                (b, TaskStatus.COMPLETED, "success", "A 2 kg bag costs $12.", {"price": "$12"}),
                (c, TaskStatus.FAILED, "failed", "No stock of 2 kg bags.", {})):
            await session.execute(update(Task).where(Task.id == task_id).values(
                status=status, result={"outcome": outcome, "summary": summary, "data": data},
                status_reason=f"analyzer: {outcome}"))


async def _campaign_row(sessions, campaign_id: int) -> Campaign:
    async with sessions() as session:
        campaign = await session.get(Campaign, campaign_id)
        assert campaign is not None
        return campaign


def test_the_plan_states_what_best_means_and_who_decides():
    check = validate_plan(a_plan(then="report_only"))
    assert check.ok and check.plan["best_of"] == {"criterion": "lowest price for a 2 kg bag", "decide": "ai",
                                                  "then": "report_only"}
    missing = {**a_plan(), "best_of": None}
    missing.pop("best_of")
    assert validate_plan(missing).errors == [
        "best_of: a best_of goal needs best_of.criterion (what makes an offer the best) and best_of.decide "
        "(ai or user)"]
    bad = a_plan()
    bad["best_of"]["decide"] = "coin"
    assert any(error.startswith("best_of.decide: 'coin' is not one of") for error in validate_plan(bad).errors)
    other = {**a_plan(), "goal_type": "each_target"}
    assert "best_of" not in validate_plan(other).plan   # only a best_of goal keeps it


async def test_the_ai_picks_the_best_offer_and_the_follow_up_to_accept_it_is_created(sessions, llm_settings,
                                                                                     fake_openai):
    user_id = await _user(sessions, "alice")
    campaign_id, (a, b, c) = await _campaign(sessions, user_id)
    async with sessions() as session:   # every target is called for an offer: none held, all due
        claimed = [t.id for t in await claim_due_tasks(session, claimer="test", limit=10)]
    assert claimed == [a, b, c]
    hub = EventHub()
    keeper = BestOfKeeper(llm_settings, sessions, hub)
    summarizer = CampaignSummarizer(llm_settings, sessions, hub)
    try:
        assert (await keeper.run_once()).decided == []   # offer calls still open: nothing to decide
        await _offers_in(sessions, a, b, c)
        assert await summarizer.finished_campaigns() == []   # the summary waits for the choice
        fake_openai.queue_reply(content=json.dumps({
            "chosen_task_id": b, "reason": "Shop B is $2 cheaper than Shop A; Shop C has no stock.",
            "compared": [{"task_id": b, "assessment": "$12"}, {"task_id": a, "assessment": "$14"}]}))
        async with hub.subscribe(user_id) as queue:
            done = await keeper.run_once()
            assert done.decided == [campaign_id]
            first, second = queue.get_nowait(), queue.get_nowait()
            assert (first.kind, first.payload) == ("campaign.updated", {"campaign_id": campaign_id,
                                                                        "action": "chosen"})
            assert second.kind == "task.updated"   # the follow-up task, pending
        body = fake_openai.requests[-1]
        assert body["response_format"]["json_schema"]["name"] == "best_offer_decision"
        sent = json.loads(body["messages"][-1]["content"])
        assert sent["criterion"] == "lowest price for a 2 kg bag"
        assert [o["task_id"] for o in sent["offers"]] == [a, b]   # C made no offer: not offered to the model

        campaign = await _campaign_row(sessions, campaign_id)
        assert campaign.best_choice["task_id"] == b and campaign.best_choice["by"] == "ai"
        assert not awaits_choice(campaign)
        async with sessions() as session:
            followup = await session.get(Task, campaign.best_followup_task_id)
        assert followup is not None and followup.phone_number == SHOPS[1][1]
        assert followup.status is TaskStatus.PENDING and followup.objective.startswith(
            "Accept the offer Shop B made on the earlier call")
        assert followup.context["accepting_offer"]["facts"] == {"price": "$12"}
        assert (await keeper.run_once()).decided == []   # decided once

        # The follow-up is an ordinary task: the summary waits for it, then reports against the goal.
        assert await summarizer.finished_campaigns() == []
        async with sessions() as session, session.begin():
            await session.execute(update(Task).where(Task.id == followup.id).values(
                status=TaskStatus.COMPLETED, result={"outcome": "success", "summary": "Ordered at $12.",
                                                     "data": {"order": "2 kg, $12"}}))
        fake_openai.queue_reply(content=json.dumps({"summary": "Bought at Shop B.", "key_findings": [],
                                                    "next_steps": []}))
        assert await summarizer.run_once() == 1
    finally:
        await keeper.close()
        await summarizer.close()
    campaign = await _campaign_row(sessions, campaign_id)
    report = campaign.summary["goal"]["report"]
    assert report.startswith("Best offer: Shop B (price $12), by lowest price for a 2 kg bag; chosen by the AI: "
                             "Shop B is $2 cheaper than Shop A; Shop C has no stock.")
    assert "Also asked: Shop A: price $14; Shop C: No stock of 2 kg bags. Follow-up" in report
    assert report.endswith("Follow-up call to accept it: accepted: Ordered at $12.")
    assert campaign.summary_text.startswith(report) and campaign.status is CampaignStatus.COMPLETED


async def test_an_ai_answer_that_names_no_offer_leaves_the_choice_to_the_user(sessions, llm_settings, fake_openai):
    user_id = await _user(sessions, "alice")
    campaign_id, (a, b, c) = await _campaign(sessions, user_id)
    await _offers_in(sessions, a, b, c)
    fake_openai.queue_reply(content=json.dumps({"chosen_task_id": c, "reason": "C", "compared": []}))
    keeper = BestOfKeeper(llm_settings, sessions)
    try:
        done = await keeper.run_once()
        assert done.decided == [] and done.asked == [campaign_id]
        assert (await keeper.run_once()).asked == []   # asked (and notified) once
    finally:
        await keeper.close()
    campaign = await _campaign_row(sessions, campaign_id)
    assert campaign.best_decided_at is None and awaits_choice(campaign)
    async with sessions() as session:
        notes = (await session.scalars(select(Notification).where(Notification.user_id == user_id))).all()
    assert [n.kind for n in notes] == ["campaign.choice_needed"]
    assert f"the AI chose task {c}, which is not one of the offers" in notes[0].message


async def test_no_offer_at_all_is_decided_without_asking_and_reported(sessions, llm_settings, fake_openai):
    user_id = await _user(sessions, "alice")
    campaign_id, tasks = await _campaign(sessions, user_id, decide="user")
    async with sessions() as session, session.begin():
        await session.execute(update(Task).where(Task.id.in_(tasks)).values(
            status=TaskStatus.FAILED, result={"outcome": "failed", "summary": "Closed.", "data": {}}))
    keeper = BestOfKeeper(llm_settings, sessions)
    assert (await keeper.run_once()).decided == [campaign_id]
    campaign = await _campaign_row(sessions, campaign_id)
    assert campaign.best_choice["task_id"] is None and campaign.best_followup_task_id is None
    assert fake_openai.requests == []   # nothing to compare: no model call


# ------------------------------------------------------------------ the user's choice, through the web app


@pytest_asyncio.fixture
async def web(settings_env, engine, sessions, llm_settings):
    runtime = make_runtime(settings_env, engine, sessions)
    alice_id = await add_user(runtime, "alice")
    await add_user(runtime, "bob")
    app = create_app(runtime)
    alice, bob = WebClient(app), WebClient(app)
    await alice.login("alice")
    await bob.login("bob")
    campaign_id, (a, b, c) = await _campaign(sessions, alice_id, decide="user", then="book_with_chosen")
    yield runtime, alice, bob, campaign_id, (a, b, c)
    await alice.aclose()
    await bob.aclose()


async def test_the_user_chooses_through_the_api_once_every_offer_is_in(web, sessions, llm_settings):
    runtime, alice, bob, campaign_id, (a, b, c) = web
    path = f"/api/campaigns/{campaign_id}/choice"
    early = await alice.api("POST", path, json={"task_id": b})
    assert early.status_code == 409 and early.json()["error"]["code"] == "still_collecting"
    assert (await alice.api("GET", path)).json()["phase"] == "collecting"
    await _offers_in(sessions, a, b, c)
    assert (await BestOfKeeper(llm_settings, sessions).run_once()).asked == [campaign_id]
    state = (await alice.api("GET", path)).json()
    assert state["phase"] == "waiting_for_choice" and state["criterion"] == "lowest price for a 2 kg bag"
    assert [(o["target"], o["has_offer"]) for o in state["offers"]] == [("Shop A", True), ("Shop B", True),
                                                                        ("Shop C", False)]
    header = (await alice.http.get(f"/campaigns/{campaign_id}/header")).text
    assert "Waiting for your choice" in header

    # Another tenant neither sees nor chooses; a choice that is not an offer is refused and changes nothing.
    assert (await bob.api("GET", path)).status_code == 404
    assert (await bob.api("POST", path, json={"task_id": b})).status_code == 404
    carol_id = await _user(sessions, "carol")
    other_campaign, (other_task, *_) = await _campaign(sessions, carol_id, decide="user")
    for bad in (c, other_task, 999_999, "B", None, True):
        refused = await alice.api("POST", path, json={"task_id": bad})
        assert refused.status_code == 400, (bad, refused.text)
    not_offer = await alice.api("POST", path, json={"task_id": c})
    error = not_offer.json()["error"]
    assert (error["code"], error["message"]) == (
        "not_an_offer", f"task {c} is not one of this campaign's offers; choose one of: {a} (Shop A), {b} (Shop B)")
    assert (await _campaign_row(sessions, campaign_id)).best_decided_at is None

    chosen = await alice.api("POST", path, json={"task_id": b, "reason": "cheapest"})
    assert chosen.status_code == 200, chosen.text
    assert chosen.json()["target"] == "Shop B" and chosen.json()["by"] == "user"
    again = await alice.api("POST", path, json={"task_id": a})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_decided"
    campaign = await _campaign_row(sessions, campaign_id)
    assert campaign.best_choice["task_id"] == b and campaign.best_choice["reason"] == "cheapest"
    async with sessions() as session:
        tasks = (await session.scalars(select(Task).where(Task.campaign_id == campaign_id))).all()
    assert len(tasks) == 4 and [t.id for t in tasks if t.id == campaign.best_followup_task_id]  # one follow-up
    assert (await alice.api("GET", path)).json()["phase"] == "decided"
    assert (await _campaign_row(sessions, other_campaign)).best_decided_at is None


async def test_the_page_lists_the_offers_and_the_form_records_the_choice_with_csrf(web, sessions, llm_settings):
    runtime, alice, bob, campaign_id, (a, b, c) = web
    await _offers_in(sessions, a, b, c)
    await BestOfKeeper(llm_settings, sessions).run_once()
    page = (await alice.http.get(f"/campaigns/{campaign_id}")).text
    assert 'id="best-of-form"' in page and "Choose the best offer" in page
    assert f'value="{a}" required >' in page and f'value="{c}" required disabled>' in page   # C made no offer
    assert "price: $12" in page and "no offer (No stock of 2 kg bags.)" in page
    assert (await bob.http.get(f"/campaigns/{campaign_id}")).status_code == 404
    fragment = await alice.http.get(f"/campaigns/{campaign_id}/best-of")   # the live refresh of the section
    assert fragment.status_code == 200 and 'id="best-of-form"' in fragment.text
    assert (await bob.http.get(f"/campaigns/{campaign_id}/best-of")).status_code == 404

    without_token = await alice.http.post(f"/campaigns/{campaign_id}/choose", data={"task_id": str(b)})
    assert without_token.status_code == 403
    assert (await bob.form(f"/campaigns/{campaign_id}/choose", {"task_id": str(b)})).status_code == 404
    refused = await alice.form(f"/campaigns/{campaign_id}/choose", {"task_id": str(c)})
    assert refused.status_code == 303
    assert "is not one of this campaign&#39;s offers" in (await alice.http.get(f"/campaigns/{campaign_id}")).text
    assert (await _campaign_row(sessions, campaign_id)).best_decided_at is None

    chosen = await alice.form(f"/campaigns/{campaign_id}/choose", {"task_id": str(a), "reason": "closer to home"})
    assert chosen.status_code == 303
    page = (await alice.http.get(f"/campaigns/{campaign_id}")).text
    assert "You chose Shop A. A call to accept the offer is scheduled." in page
    assert "Chosen: Shop A</strong>" in page and "closer to home" in page and 'id="best-of-form"' not in page
    campaign = await _campaign_row(sessions, campaign_id)
    assert campaign.goal_type is CampaignGoal.BEST_OF and campaign.best_choice["by"] == "user"


def test_the_offer_calls_collect_and_the_follow_up_accepts():
    from audiosocket.instructions import build_instructions
    from db.models import User

    campaign = Campaign(id=1, user_id=1, goal_type=CampaignGoal.BEST_OF, best_criterion="lowest price",
                        best_decide="ai", best_then="book_with_chosen", best_followup_task_id=9, master_prompt="")
    offer = Task(id=3, target_name="Shop A", phone_number=SHOPS[0][1], objective="Ask the price", language="en",
                 context={})
    user = User(username="alice", profile={})
    text = build_instructions(task=offer, user=user, campaign=campaign)
    assert ("This call collects an offer; it does not commit. Ask for the offer and every detail needed to compare "
            "it by: lowest price. Do not accept, book, order, pay or promise anything") in text
    followup = Task(id=9, target_name="Shop A", phone_number=SHOPS[0][1], objective="Accept the offer", language="en",
                    context={})
    assert "it does not commit" not in build_instructions(task=followup, user=user, campaign=campaign)
    campaign.goal_type = CampaignGoal.EACH_TARGET
    assert "it does not commit" not in build_instructions(task=offer, user=user, campaign=campaign)


@pytest.mark.parametrize("then", ["report_only", "book_with_chosen"])
async def test_of_two_racing_choices_one_wins_and_there_is_at_most_one_follow_up(sessions, then):
    from opendeep.best_of import ChoiceError, choose

    user_id = await _user(sessions, "alice")
    campaign_id, (a, b, c) = await _campaign(sessions, user_id, then=then)
    await _offers_in(sessions, a, b, c)
    late = sessions()
    try:
        await late.begin()
        stale = await repo.get_campaign(late, user_id, campaign_id)   # read before the other choice commits
        assert stale is not None and stale.best_decided_at is None
        async with sessions() as session, session.begin():
            campaign = await repo.get_campaign(session, user_id, campaign_id)
            assert campaign is not None
            first = await choose(session, campaign, b, by="user", reason="cheapest")
        try:
            await choose(late, stale, a, by="ai", reason="also fine")
        except ChoiceError as exc:
            # The conditional UPDATE refuses it; with a follow-up, the late reader may already see that task open.
            assert exc.code in (("already_decided",) if then == "report_only" else ("already_decided",
                                                                                    "still_collecting"))
        else:
            raise AssertionError("the second choice was accepted")
        await late.rollback()
    finally:
        await late.close()
    async with sessions() as session:
        tasks = (await session.scalars(select(Task).where(Task.campaign_id == campaign_id))).all()
    expected = [first["followup_task_id"]] if then == "book_with_chosen" else []
    assert [t.id for t in tasks if t.id not in (a, b, c)] == expected
    assert (await _campaign_row(sessions, campaign_id)).best_choice["task_id"] == b


async def test_the_0012_best_of_migration_goes_down_and_up_again(engine, database_url):
    from alembic import command
    from sqlalchemy import inspect

    from db.migrate import alembic_config

    config = alembic_config(database_url)
    added = {"best_criterion", "best_decide", "best_then", "best_choice", "best_decided_at", "best_asked_at",
             "best_followup_task_id"}

    def migrate(sync_connection, to: str, step) -> set[str]:
        config.attributes["connection"] = sync_connection
        step(config, to)
        return {c["name"] for c in inspect(sync_connection).get_columns("campaigns")}

    async with engine.begin() as connection:
        down = await connection.run_sync(migrate, "0011_task_life", command.downgrade)
    try:
        assert not added & down and "goal_type" in down
    finally:
        async with engine.begin() as connection:
            up = await connection.run_sync(migrate, "head", command.upgrade)
    assert added <= up


async def test_a_campaign_whose_best_offer_is_chosen_takes_no_new_targets(web, sessions, llm_settings):
    runtime, alice, bob, campaign_id, (a, b, c) = web
    await _offers_in(sessions, a, b, c)
    csv = "name,phone_number\nShop D,+14155550104\n"
    added = await alice.api("POST", f"/api/campaigns/{campaign_id}/targets", content=csv,
                            headers={"content-type": "text/csv"})
    assert added.status_code == 201, added.text   # before the choice: one more offer to wait for
    path = f"/api/campaigns/{campaign_id}/choice"
    assert (await alice.api("POST", path, json={"task_id": b})).json()["error"]["code"] == "still_collecting"
    async with sessions() as session, session.begin():
        await session.execute(update(Task).where(Task.id == added.json()["task_ids"][0]).values(
            status=TaskStatus.FAILED, result={"outcome": "failed", "summary": "Closed for good.", "data": {}}))
    assert (await alice.api("POST", path, json={"task_id": b})).status_code == 200
    refused = await alice.api("POST", f"/api/campaigns/{campaign_id}/targets", content=csv.replace("D,", "E,")
                              .replace("0104", "0105"), headers={"content-type": "text/csv"})
    assert refused.status_code == 409 and "best offer of this campaign has been chosen" in refused.text


async def test_once_chosen_only_the_follow_up_can_be_called_again(web, sessions):
    runtime, alice, bob, campaign_id, (a, b, c) = web
    await _offers_in(sessions, a, b, c)
    chosen = (await alice.api("POST", f"/api/campaigns/{campaign_id}/choice", json={"task_id": b})).json()
    refused = await alice.api("POST", f"/api/tasks/{a}/retry-now")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "choice_made"
    followup = await alice.api("POST", f"/api/tasks/{chosen['followup_task_id']}/call-now")
    assert followup.status_code == 200, followup.text


async def test_the_follow_up_is_an_ordinary_task_for_the_scheduler_dnd_and_window_apply(sessions, settings):
    from datetime import UTC, datetime

    from ami_controller.scheduler import screen_claimed_tasks
    from opendeep.best_of import choose

    user_id = await _user(sessions, "alice")
    # Shop B's follow-up: outside the calling window (03:00 UTC is 19:00 in San Francisco); Shop A's: on DND.
    night = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    followups = {}
    for name, then_dnd in (("B", False), ("A", True)):
        campaign_id, (a, b, c) = await _campaign(sessions, user_id, criterion=f"price {name}")
        await _offers_in(sessions, a, b, c)
        async with sessions() as session, session.begin():
            campaign = await repo.get_campaign(session, user_id, campaign_id)
            assert campaign is not None
            campaign.window_start, campaign.window_end = "09:00", "17:00"
            chosen = await choose(session, campaign, b if name == "B" else a, by="user", reason="", now=night)
            if then_dnd:
                await repo.add_dnd(session, user_id, SHOPS[0][1], "asked not to be called")
        followups[name] = chosen["followup_task_id"]
    async with sessions() as session:
        claimed = await claim_due_tasks(session, claimer="test", limit=10, now=night)
    assert sorted(t.id for t in claimed) == sorted(followups.values())
    screened = await screen_claimed_tasks(sessions, settings, claimed, now=night)
    assert [t.id for t in screened.cancelled_dnd] == [followups["A"]]
    assert [t.id for t in screened.rescheduled] == [followups["B"]] and screened.callable == []
