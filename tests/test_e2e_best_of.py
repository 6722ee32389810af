"""The best-of goal end to end: `opendeep serve` as a subprocess, the Asterisk simulator running the shipped
dialplan (tests/doubles/asterisk_sim.py) and scripted models on the fake OpenAI server.

"Find the cheapest 2 kg bag of these two shops and order it": both shops are called for an offer (the call AI is
told to collect, not to commit), the AI compares the offers by the plan's criterion and picks the cheaper one,
the chosen shop is called back (a third call, its objective to accept that offer), and the summary reports the
best offer, the other one, and the follow-up's result.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import httpx
import pytest

from db.models import CampaignStatus, TaskStatus
from tests.doubles.ami_helpers import eventually
from tests.doubles.fake_openai import DEMO_TARGETS, ScriptedModels, always_open_window
from tests.doubles.fake_realtime import FakeRealtimeConnection, FakeResponse
from tests.doubles.sim_stack import simulator_stack
from tests.test_e2e_campaign import PASSWORD, USER, _db_rows, _login, _summary, _task_if

(_, CHEAP_NUMBER), (_, DEAR_NUMBER) = DEMO_TARGETS
SHOPS = {"Bean Barn": (DEAR_NUMBER, "$14"), "Roast Room": (CHEAP_NUMBER, "$12")}   # plan order: Bean Barn first
CRITERION = "lowest price for a 2 kg bag"


class OfferModels(ScriptedModels):
    """Shops that quote a price; the decision picks the lowest; the follow-up call orders."""

    def __init__(self) -> None:
        super().__init__(tuple((name, number) for name, (number, _) in SHOPS.items()), ask_user=False)
        self.instructions: list[str] = []   # each call's session instructions, in call order
        self.decisions: list[dict[str, Any]] = []   # what the decision request was sent

    def chat(self, body: dict[str, Any]) -> dict[str, Any] | None:
        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("name")
        if schema == "best_offer_decision":
            facts = json.loads(body["messages"][-1]["content"])
            self.decisions.append(facts)
            cheapest = min(facts["offers"], key=lambda offer: float(offer["facts"]["price"].lstrip("$")))
            return {"content": json.dumps({
                "chosen_task_id": cheapest["task_id"], "reason": f"{cheapest['target']} has the lowest price.",
                "compared": [{"task_id": o["task_id"], "assessment": o["facts"]["price"]} for o in facts["offers"]]})}
        return super().chat(body)

    @staticmethod
    def analysis(body: dict[str, Any]) -> dict[str, Any]:
        facts = json.dumps(body.get("messages") or [])
        common = {"should_retry": False, "retry_at": None, "callback_requested": False, "add_to_dnd": False,
                  "notes_for_next_call": ""}
        name = next(name for name in SHOPS if name in facts)
        if "Accept the offer" in facts:
            return {**common, "outcome": "success", "summary": f"Ordered a 2 kg bag from {name}.",
                    "extracted": [{"name": "order", "value": "2 kg bag"}], "reason": "The order was placed."}
        price = SHOPS[name][1]
        return {**common, "outcome": "success", "summary": f"{name} quotes {price} for a 2 kg bag.",
                "extracted": [{"name": "price", "value": price}], "reason": "The offer was given."}

    def realtime(self, conn: FakeRealtimeConnection, index: int) -> FakeResponse | None:
        if index == 0:
            self.instructions.append(str(conn.session_config().get("instructions") or ""))
        return super().realtime(conn, index)


@contextlib.asynccontextmanager
async def _stack(tmp_path, models: ScriptedModels):
    """The scripted models on the fake OpenAI server, the simulator and `opendeep serve`."""
    async with simulator_stack(tmp_path, models, user=USER, password=PASSWORD, talk_seconds=30, database="best.db",
                               env={"SCHEDULER_POLL_SECONDS": "0.2"}) as (serve, sim, _):
        yield serve, sim


@pytest.fixture
async def offer_stack(tmp_path):
    models = OfferModels()
    async with _stack(tmp_path, models) as (serve, sim):
        yield serve, sim, models


async def test_offers_are_collected_the_ai_picks_the_cheapest_and_the_chosen_shop_is_called_back(offer_stack):
    serve, sim, models = offer_stack
    plan = {"name": "Espresso beans", "goal": "Order a 2 kg bag of espresso beans where it is cheapest.",
            "goal_type": "best_of", "best_of": {"criterion": CRITERION, "decide": "ai", "then": "book_with_chosen"},
            "calling_window": always_open_window(CHEAP_NUMBER), "max_attempts": 1,
            "targets": [{"name": name, "phone_number": number, "objective": "Ask the price of a 2 kg bag."}
                        for name, (number, _) in SHOPS.items()]}
    async with httpx.AsyncClient(base_url=serve.web_url, timeout=10) as http:
        headers = {"x-csrf-token": await _login(http)}
        created = await http.post("/api/campaigns", json={"plan": plan, "source_key": "beans"}, headers=headers)
        assert created.status_code == 201, created.text
        campaign_id, (dear_id, cheap_id) = created.json()["campaign_id"], created.json()["task_ids"]

        # Both shops are called for an offer (no one waits its turn).
        offer_calls = [await sim.wait_for_call(timeout=15), await sim.wait_for_call(timeout=15)]
        assert sorted(c.number for c in offer_calls) == sorted([CHEAP_NUMBER, DEAR_NUMBER])
        for call in offer_calls:
            await call.wait_done(timeout=20)
        for task_id in (dear_id, cheap_id):
            await eventually(lambda task_id=task_id: _task_if(http, task_id, "completed"), 20, 0.1,
                             what="the offer call's verdict")

        # The AI decides; the chosen shop is called back to accept its offer.
        follow_up = await sim.wait_for_call(timeout=30)
        assert follow_up.number == CHEAP_NUMBER
        await follow_up.wait_done(timeout=20)
        state = (await http.get(f"/api/campaigns/{campaign_id}/choice")).json()
        assert state["phase"] == "decided" and state["choice"]["task_id"] == cheap_id
        followup_id = state["followup_task_id"]
        await eventually(lambda: _task_if(http, followup_id, "completed"), 20, 0.1, what="the order")
        summary = await eventually(lambda: _summary(http, campaign_id), 30, 0.1, what="the summary")

    report = summary["summary"]["goal"]["report"]
    assert report.startswith(f"Best offer: Roast Room (price $12), by {CRITERION}; chosen by the AI: Roast Room "
                             "has the lowest price.")
    assert "Also asked: Bean Barn: price $14." in report
    assert report.endswith("Follow-up call to accept it: accepted: Ordered a 2 kg bag from Roast Room.")
    assert summary["summary_text"].startswith(report)

    # The model compared both offers against the criterion; the offer calls were told not to commit, the
    # follow-up was told to accept.
    assert [d["criterion"] for d in models.decisions] == [CRITERION]
    assert sorted(o["facts"]["price"] for o in models.decisions[0]["offers"]) == ["$12", "$14"]
    collecting = [text for text in models.instructions if "This call collects an offer; it does not commit" in text]
    assert len(collecting) == 2 and all(CRITERION in text for text in collecting)
    accepting = [text for text in models.instructions if re.search(r"Objective of this call: Accept the offer "
                                                                   r"Roast Room made", text)]
    assert len(accepting) == 1 and "it does not commit" not in accepting[0]

    assert len(sim.calls) == 3   # two offers, one follow-up: nobody dialed twice
    campaign, tasks, calls, _, _, _ = await _db_rows(serve.env["DATABASE_URL"], campaign_id)
    assert campaign.status is CampaignStatus.COMPLETED and campaign.best_followup_task_id == followup_id
    assert {t.id: t.status for t in tasks} == {dear_id: TaskStatus.COMPLETED, cheap_id: TaskStatus.COMPLETED,
                                               followup_id: TaskStatus.COMPLETED}
    assert sorted(c.task_id for c in calls) == sorted([dear_id, cheap_id, followup_id])


async def test_the_demo_request_ask_both_dentists_and_let_me_pick_waits_for_the_users_choice(tmp_path):
    """What `make demo` shows: the assistant reads "let me pick" as best of several (the user decides, the chosen
    one is booked); both dentists give their earliest slot; the campaign waits for the user's choice; the chosen
    dentist is called back and books; the summary says which was chosen and what the other offered."""
    models = ScriptedModels(DEMO_TARGETS, ask_user=True, goal=None)
    (first, first_number), (second, second_number) = DEMO_TARGETS
    async with _stack(tmp_path, models) as (serve, sim), httpx.AsyncClient(base_url=serve.web_url, timeout=10) as http:
        headers = {"x-csrf-token": await _login(http)}
        chat_id = (await http.post("/api/chats", json={}, headers=headers)).json()["id"]
        turn = (await http.post(f"/api/chats/{chat_id}/messages", headers=headers, json={
            "text": "Ask these two dentists for their earliest cleaning next week and let me pick."})).json()
        assert turn["plan"]["goal_type"] == "best_of" and turn["plan"]["best_of"]["decide"] == "user"
        assert "Best of several" in (await http.get(f"/chat/{chat_id}")).text
        confirmed = await http.post(f"/api/chats/{chat_id}/confirm", headers=headers,
                                    json={"source_key": turn["chat"]["source_key"]})
        assert confirmed.status_code == 201, confirmed.text
        campaign_id, (first_id, second_id) = confirmed.json()["campaign_id"], confirmed.json()["task_ids"]
        for call in [await sim.wait_for_call(timeout=15), await sim.wait_for_call(timeout=15)]:
            await call.wait_done(timeout=20)

        async def waiting():
            state = (await http.get(f"/api/campaigns/{campaign_id}/choice")).json()
            return state if state["phase"] == "waiting_for_choice" else None
        state = await eventually(waiting, 30, 0.1, what="the request for the user's choice")
        assert [(o["task_id"], o["facts"]) for o in state["offers"]] == [
            (first_id, {"earliest": "Thursday at 15:30"}), (second_id, {"earliest": "Tuesday at 10:00"})]
        assert await _summary(http, campaign_id) is None   # the summary waits for the choice
        chosen = await http.post(f"/api/campaigns/{campaign_id}/choice", headers=headers,
                                 json={"task_id": second_id, "reason": "earliest"})
        assert chosen.status_code == 200, chosen.text
        follow_up = await sim.wait_for_call(timeout=30)
        assert follow_up.number == second_number
        await follow_up.wait_done(timeout=20)
        summary = await eventually(lambda: _summary(http, campaign_id), 30, 0.1, what="the summary")

    report = summary["summary"]["goal"]["report"]
    assert report.startswith(f"Best offer: {second} (earliest Tuesday at 10:00), by earliest appointment; your "
                             "choice: earliest.")
    assert f"Also asked: {first}: earliest Thursday at 15:30." in report
    assert report.endswith("Follow-up call to accept it: accepted: Booked the cleaning for Tuesday at 10:00.")
    assert len(sim.calls) == 3 and [c.number for c in sim.calls].count(first_number) == 1
