"""The campaign goal "best of several": every target is called for an offer, then the best one is chosen.

The plan states what "best" means (`criterion`, e.g. "lowest price for a 2 kg bag"), who decides (`decide`: "ai"
or "user") and what follows (`then`: "report_only", or "book_with_chosen": the chosen target is called back to
accept its offer). The campaign's calls collect offers and commit to nothing (audiosocket/instructions.py says
so to the call AI). Once every offer call is finished, `BestOfKeeper.run_once` (the lifecycle pass) decides:
- decide=ai: one structured completion compares the offers against the criterion and names the best, with
  reasons; an answer that names no offer (or no answer at all) leaves the choice to the user, saying why;
- decide=user: the user is asked on the campaign page (and the API) and notified, once.
A choice is written by one conditional UPDATE (`best_decided_at IS NULL`), with the follow-up task (to accept
the offer) in the same transaction: of two racing deciders (the AI pass and a user's click, or two clicks) one
wins and the follow-up exists at most once. The follow-up is an ordinary task: the scheduler dials it within
the calling window, after the DND check, in test mode if set. The summarizer waits until the choice is made
(`awaits_choice`) and reports against the goal (`goal_report`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import jsonschema
import openai
from sqlalchemy import CursorResult, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import repo
from db.costs import Scope
from db.models import TERMINAL_TASK_STATUSES, Campaign, CampaignGoal, CampaignStatus, Task, TaskStatus, UsageKind
from db.types import utcnow
from opendeep.costs import record_chat_usage
from opendeep.llm import LlmNotConfigured, LlmRequestError, chat_client, structured_completion
from opendeep.settings import Settings

if TYPE_CHECKING:
    from opendeep.events import EventHub

log = logging.getLogger("opendeep.best_of")

DECIDERS = ("ai", "user")
THEN = ("report_only", "book_with_chosen")
DEFAULT_CRITERION = "the offer that best meets the campaign's goal"
OFFER_OUTCOMES = ("success", "partial")   # the analyzer's verdicts of a call that brought back an offer
FOLLOWUP_KEY = "accepting_offer"          # tasks.context of the follow-up: the offer being accepted
MAX_OFFERS_TO_MODEL = 200
MAX_REASON_CHARS = 1000   # the model's (or the user's) reason, shown on the page and in the summary

DECISION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["chosen_task_id", "reason", "compared"],
    "properties": {
        "chosen_task_id": {"type": "integer", "description": "task_id of the best offer, one of those given"},
        "reason": {"type": "string", "description": "one sentence for the user: why this offer is the best "
                                                     "by the criterion"},
        "compared": {"type": "array", "description": "every offer, best first",
                     "items": {"type": "object", "additionalProperties": False,
                               "required": ["task_id", "assessment"],
                               "properties": {"task_id": {"type": "integer"},
                                              "assessment": {"type": "string"}}}},
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(DECISION_SCHEMA)

SYSTEM_PROMPT = """You choose the best of several offers that phone calls collected for a user.
You get the campaign's goal, the criterion that defines "best", and one entry per offer (task_id, the business,
what the call found out, the facts it extracted). Pick the single best offer by the criterion, using only the
facts given; if facts are missing for an offer, say so in its assessment. Answer in the JSON schema given."""


class ChoiceError(ValueError):
    """A choice that cannot be made: `code` for the API, the message for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class BestOf:
    """A best-of campaign's settings."""

    criterion: str = DEFAULT_CRITERION
    decide: str = "user"
    then: str = "report_only"


def settings_of(campaign: Campaign) -> BestOf:
    """The campaign's best-of settings (defaults for a campaign made without them, e.g. from a CSV)."""
    return BestOf(campaign.best_criterion or DEFAULT_CRITERION,
                  campaign.best_decide if campaign.best_decide in DECIDERS else "user",
                  campaign.best_then if campaign.best_then in THEN else "report_only")


def from_plan(plan: Mapping[str, Any]) -> BestOf:
    """The best-of settings a validated plan states."""
    best = plan.get("best_of") or {}
    return BestOf(str(best.get("criterion") or DEFAULT_CRITERION), str(best.get("decide") or "user"),
                  str(best.get("then") or "report_only"))


def describe(best: BestOf) -> str:
    """The goal in words (plan page, campaign page, summary)."""
    who = "the AI picks" if best.decide == "ai" else "you pick"
    after = ("; the chosen one is then called back to accept its offer" if best.then == "book_with_chosen"
             else "; the choice is reported, nothing is booked")
    return (f"Best of several: every target is asked for an offer (nothing is accepted on these calls); then "
            f"{who} the best by \u201c{best.criterion}\u201d{after}.")


def collect_instruction(best: BestOf, user_name: str) -> str:
    """The call AI's instruction on a best-of campaign's offer call."""
    return ("This call collects an offer; it does not commit. Ask for the offer and every detail needed to compare "
            f"it by: {best.criterion}. Do not accept, book, order, pay or promise anything: tell the callee that "
            f"{user_name} is comparing offers and will come back to them if they choose this one.")


def is_followup(campaign: Campaign | None, task: Task) -> bool:
    """Whether this task is the call that accepts the chosen offer (not an offer call)."""
    return campaign is not None and campaign.best_followup_task_id == task.id


def offer_of(task: Task) -> dict[str, Any]:
    """A target's offer as the decision and the page show it (has_offer: the call brought one back)."""
    result = task.result if isinstance(task.result, dict) else {}
    data = result.get("data") if isinstance(result.get("data"), dict) else {}
    return {"task_id": task.id, "target": task.target_name, "phone_number": task.phone_number,
            "status": task.status.value, "outcome": result.get("outcome"),
            "summary": str(result.get("summary") or task.status_reason or "").strip(), "facts": data,
            "has_offer": task.status is TaskStatus.COMPLETED and result.get("outcome") in OFFER_OUTCOMES}


def _offer_tasks(campaign: Campaign) -> Any:
    followup = campaign.best_followup_task_id
    return select(Task).where(Task.user_id == campaign.user_id, Task.campaign_id == campaign.id,
                              *([Task.id != followup] if followup else [])).order_by(Task.id)


async def offers(session: AsyncSession, campaign: Campaign) -> list[dict[str, Any]]:
    """Every offer call of the campaign, in plan order (the follow-up excluded)."""
    return [offer_of(task) for task in (await session.scalars(_offer_tasks(campaign))).all()]


def awaits_choice(campaign: Campaign) -> bool:
    """A best-of campaign not yet decided (and not cancelled): its summary waits."""
    return (campaign.goal_type is CampaignGoal.BEST_OF and campaign.best_decided_at is None
            and campaign.status is not CampaignStatus.CANCELLED)


def not_awaiting_choice() -> Any:
    """SQL twin of `not awaits_choice(campaign)`, for the summarizer's query."""
    return or_(Campaign.goal_type != CampaignGoal.BEST_OF, Campaign.best_decided_at.is_not(None),
               Campaign.status == CampaignStatus.CANCELLED)


async def state(session: AsyncSession, campaign: Campaign) -> dict[str, Any] | None:
    """What the campaign page and the API show of the goal's decision (None: not a best-of campaign).
    phase: collecting (offer calls still open) | waiting_for_choice | decided | cancelled."""
    if campaign.goal_type is not CampaignGoal.BEST_OF:
        return None
    best = settings_of(campaign)
    found = await offers(session, campaign)
    if campaign.best_decided_at is not None:
        phase = "decided"
    elif campaign.status is CampaignStatus.CANCELLED:
        phase = "cancelled"
    elif not found or any(TaskStatus(o["status"]) not in TERMINAL_TASK_STATUSES for o in found):
        phase = "collecting"
    else:
        phase = "waiting_for_choice"
    return {"criterion": best.criterion, "decide": best.decide, "then": best.then, "in_words": describe(best),
            "phase": phase, "offers": found, "choice": campaign.best_choice,
            "followup_task_id": campaign.best_followup_task_id,
            "asked_at": campaign.best_asked_at.isoformat() if campaign.best_asked_at else None}


def followup_objective(offer: Mapping[str, Any], criterion: str) -> str:
    """The follow-up call's objective: accept the offer this target made."""
    facts = ", ".join(f"{key}: {value}" for key, value in (offer.get("facts") or {}).items())
    return (f"Accept the offer {offer['target']} made on the earlier call and close the deal. Their offer: "
            f"{offer.get('summary') or 'see the context'}" + (f" ({facts})" if facts else "")
            + f". It was chosen as the best by: {criterion}. Confirm the details are still valid; if they changed, "
              "ask the user before accepting.")


async def choose(session: AsyncSession, campaign: Campaign, task_id: int | None, *, by: str, reason: str,
                 compared: list[dict[str, Any]] | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Record the choice (task_id None: no target made an offer) and, if the plan says so, create the follow-up
    task, in the caller's transaction. ChoiceError when it cannot be made: not a best-of campaign, offer calls
    still open, already decided, or task_id is not one of this campaign's offers."""
    now = now or utcnow()
    if campaign.goal_type is not CampaignGoal.BEST_OF:
        raise ChoiceError("not_best_of", "this campaign's goal is not 'best of several': there is nothing to choose")
    if campaign.best_decided_at is not None:
        raise ChoiceError("already_decided", "the choice for this campaign has already been made")
    if campaign.status is CampaignStatus.CANCELLED:
        raise ChoiceError("cancelled", "the campaign was cancelled: there is nothing to choose")
    found = await offers(session, campaign)
    if any(TaskStatus(o["status"]) not in TERMINAL_TASK_STATUSES for o in found):
        raise ChoiceError("still_collecting", "offer calls are still open: choose once every target has answered")
    chosen = next((o for o in found if o["task_id"] == task_id), None)
    if task_id is not None and (chosen is None or not chosen["has_offer"]):
        choices = ", ".join(f"{o['task_id']} ({o['target']})" for o in found if o["has_offer"]) or "none"
        raise ChoiceError("not_an_offer", f"task {task_id} is not one of this campaign's offers; choose one of: "
                                          f"{choices}")
    best = settings_of(campaign)
    choice = {"task_id": task_id, "target": chosen["target"] if chosen else None, "by": by,
              "reason": reason.strip()[:MAX_REASON_CHARS], "compared": (compared or [])[:MAX_OFFERS_TO_MODEL],
              "at": now.isoformat()}
    followup_id: int | None = None
    if chosen is not None and best.then == "book_with_chosen":
        task = await repo.get_task(session, campaign.user_id, chosen["task_id"])
        assert task is not None   # one of the campaign's tasks, read above in this session
        followup = await repo.add_task(
            session, campaign.user_id, campaign.id, target_name=task.target_name, phone_number=task.phone_number,
            objective=followup_objective(chosen, best.criterion),
            context={**{k: v for k, v in (task.context or {}).items() if not k.startswith("learned_")},
                     FOLLOWUP_KEY: {"offer": chosen["summary"], "facts": chosen["facts"],
                                    "offer_task_id": chosen["task_id"]}},
            max_attempts=task.max_attempts, language=task.language, next_action_time=now)
        followup_id = followup.id
    result = cast(CursorResult[Any], await session.execute(
        update(Campaign).where(Campaign.id == campaign.id, Campaign.user_id == campaign.user_id,
                               Campaign.best_decided_at.is_(None))
        .values(best_choice=choice, best_decided_at=now, best_followup_task_id=followup_id,
                goal_met_task_id=task_id)))
    if result.rowcount != 1:   # decided meanwhile: the caller's transaction rolls back the follow-up too
        raise ChoiceError("already_decided", "the choice for this campaign has already been made")
    if task_id is not None:
        await repo.record_task_event(session, campaign.user_id, task_id, "goal.chosen", reason.strip()[:500],
                                     {"by": by, "followup_task_id": followup_id})
    return {**choice, "followup_task_id": followup_id}


@dataclass
class BestOfPass:
    """What one pass did (campaign ids), for logs and tests."""

    decided: list[int] = field(default_factory=list)
    asked: list[int] = field(default_factory=list)


class BestOfKeeper:
    """Decides best-of campaigns whose offer calls are all finished (see the module docstring)."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession],
                 events: EventHub | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.events = events
        self._client: openai.AsyncOpenAI | None = None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def due(self) -> list[tuple[int, int]]:
        """(user_id, campaign_id) of undecided best-of campaigns with tasks, none open, not yet asked."""
        open_task = exists().where(Task.campaign_id == Campaign.id, Task.status.not_in(list(TERMINAL_TASK_STATUSES)))
        any_task = exists().where(Task.campaign_id == Campaign.id)
        async with self.sessions() as session:
            rows = await session.execute(
                select(Campaign.user_id, Campaign.id).where(
                    Campaign.goal_type == CampaignGoal.BEST_OF, Campaign.best_decided_at.is_(None),
                    Campaign.best_asked_at.is_(None),
                    Campaign.status.in_([CampaignStatus.ACTIVE, CampaignStatus.PAUSED]), any_task, ~open_task)
                .order_by(Campaign.id))
            return [(user_id, campaign_id) for user_id, campaign_id in rows.all()]

    async def run_once(self, now: datetime | None = None) -> BestOfPass:
        """One pass: decide (AI) or ask (user) for every campaign that is due."""
        done = BestOfPass()
        for user_id, campaign_id in await self.due():
            try:
                await self._settle(user_id, campaign_id, now or utcnow(), done)
            except Exception:   # one campaign's bad row must not stop the others
                log.exception("best-of decision failed for campaign %s", campaign_id)
        return done

    async def _settle(self, user_id: int, campaign_id: int, now: datetime, done: BestOfPass) -> None:
        async with self.sessions() as session:
            campaign = await repo.get_campaign(session, user_id, campaign_id)
            if campaign is None or not awaits_choice(campaign):
                return
            best = settings_of(campaign)
            found = await offers(session, campaign)
        with_offer = [o for o in found if o["has_offer"]]
        why_user = ""
        if not with_offer:
            await self._decide(user_id, campaign_id, None, "no target made an offer", [], now, done)
            return
        if best.decide == "ai":
            picked = await self._ask_model(campaign, best, with_offer)
            if isinstance(picked, str):
                why_user = picked
            else:
                await self._decide(user_id, campaign_id, *picked, now, done)
                return
        await self._ask_user(user_id, campaign_id, campaign.name, len(with_offer), why_user, now, done)

    async def _decide(self, user_id: int, campaign_id: int, task_id: int | None, reason: str,
                      compared: list[dict[str, Any]], now: datetime, done: BestOfPass) -> None:
        try:   # a ChoiceError rolls the whole transaction back (a follow-up task included)
            async with self.sessions() as session, session.begin():
                campaign = await repo.get_campaign(session, user_id, campaign_id)
                if campaign is None:
                    return
                choice = await choose(session, campaign, task_id, by="ai" if task_id is not None else "rules",
                                      reason=reason, compared=compared, now=now)
        except ChoiceError as exc:   # decided meanwhile (the user), or a target was added: next pass
            log.info("campaign %s: no decision this pass: %s", campaign_id, exc.message)
            return
        done.decided.append(campaign_id)
        log.info("campaign %s: best offer %s (%s)", campaign_id, choice["target"], reason)
        publish_choice(self.events, user_id, campaign_id, choice)

    async def _ask_model(self, campaign: Campaign, best: BestOf,
                         with_offer: list[dict[str, Any]]) -> tuple[int, str, list[dict[str, Any]]] | str:
        """The model's pick (task id, reason, comparison), or why it gave none (the user then decides)."""
        usage: list[Any] = []
        model = self.settings.openai_analyzer_model
        facts = {"goal": campaign.goal, "criterion": best.criterion,
                 "offers": [{key: offer[key] for key in ("task_id", "target", "summary", "facts")}
                            for offer in with_offer[:MAX_OFFERS_TO_MODEL]]}
        try:
            if self._client is None:
                self._client = chat_client(self.settings)
            text = await structured_completion(
                self._client, model, [{"role": "system", "content": SYSTEM_PROMPT},
                                      {"role": "user", "content": json.dumps(facts, ensure_ascii=False)}],
                name="best_offer_decision", schema=DECISION_SCHEMA, on_usage=usage.append)
        except (LlmNotConfigured, LlmRequestError) as exc:
            return f"the AI could not decide ({exc})"
        finally:   # the decision is post-call work of the campaign: priced as analyzer usage
            await record_chat_usage(self.sessions, self.settings, Scope(campaign.user_id, campaign.id),
                                    UsageKind.ANALYZER, model, usage)
        try:
            answer = json.loads(text)
        except ValueError:
            return "the AI's answer was not JSON"
        errors = [e.message for e in _VALIDATOR.iter_errors(answer)]
        if errors:
            return f"the AI's answer did not fit the schema ({errors[0]})"
        if answer["chosen_task_id"] not in {offer["task_id"] for offer in with_offer}:
            return f"the AI chose task {answer['chosen_task_id']}, which is not one of the offers"
        return answer["chosen_task_id"], answer["reason"], answer["compared"]

    async def _ask_user(self, user_id: int, campaign_id: int, name: str, count: int, why: str, now: datetime,
                        done: BestOfPass) -> None:
        message = (f"Campaign '{name}': {count} offer(s) collected; choose the best one on the campaign page"
                   + (f" ({why})" if why else "") + ".")
        async with self.sessions() as session, session.begin():
            asked = cast(CursorResult[Any], await session.execute(
                update(Campaign).where(Campaign.id == campaign_id, Campaign.user_id == user_id,
                                       Campaign.best_asked_at.is_(None), Campaign.best_decided_at.is_(None))
                .values(best_asked_at=now)))
            if asked.rowcount != 1:
                return
            note = await repo.add_notification(session, user_id, "campaign.choice_needed", message,
                                               {"campaign_id": campaign_id, "why_you": why or None})
        done.asked.append(campaign_id)
        log.info("campaign %s: waiting for the user's choice%s", campaign_id, f" ({why})" if why else "")
        if self.events is not None:
            self.events.publish(user_id, "campaign.updated", {"campaign_id": campaign_id, "action": "choice_needed"})
            self.events.publish(user_id, "notification", {"id": note.id, "kind": note.kind, "message": note.message})


def publish_choice(events: EventHub | None, user_id: int, campaign_id: int, choice: Mapping[str, Any]) -> None:
    """Tell the user's pages a choice was made (and a follow-up task, if any, exists)."""
    if events is None:
        return
    events.publish(user_id, "campaign.updated", {"campaign_id": campaign_id, "action": "chosen"})
    if choice.get("followup_task_id"):
        events.publish(user_id, "task.updated", {"task_id": choice["followup_task_id"], "campaign_id": campaign_id,
                                                 "status": TaskStatus.PENDING.value})


def goal_report(campaign: Campaign, rows: list[dict[str, Any]]) -> str:
    """The summary's report against the goal: "Best offer: Shop B (price $12) (lowest price); also asked: ..."."""
    best = settings_of(campaign)
    choice = campaign.best_choice or {}
    followup = campaign.best_followup_task_id
    offer_rows = [row for row in rows if row["task_id"] != followup]
    chosen = next((row for row in offer_rows if row["task_id"] == choice.get("task_id")), None)

    def said(row: dict[str, Any]) -> str:
        facts = ", ".join(f"{key} {value}" for key, value in (row.get("result") or {}).items())
        return facts or row.get("summary") or row.get("outcome_words") or row["outcome"]

    def offered(row: dict[str, Any]) -> str:
        if row["outcome"] in OFFER_OUTCOMES:
            return said(row)
        # No offer: what the call found out ("No stock of 2 kg bags."), else the outcome in words ("not called").
        return (row.get("summary") if row.get("verdict") else "") or row.get("outcome_words") or row["outcome"]

    others = "; ".join(f"{row['target']}: {offered(row).rstrip('.')}" for row in offer_rows if row is not chosen)
    if chosen is None:
        if campaign.best_decided_at is None:
            return f"No choice made: the campaign ended before the best of the {len(offer_rows)} offer(s) was chosen."
        return (f"No offer to choose from: none of the {len(offer_rows)} target(s) made one"
                + (f" ({others})." if others else "."))
    who = "chosen by the AI" if choice.get("by") == "ai" else "your choice"
    text = f"Best offer: {chosen['target']} ({said(chosen).rstrip('.')}), by {best.criterion}; {who}"
    text += f": {choice['reason'].rstrip('.')}." if choice.get("reason") else "."
    if others:
        text += f" Also asked: {others}."
    if followup:
        row = next((row for row in rows if row["task_id"] == followup), None)
        if row is not None:
            words = row.get("outcome_words") or row["outcome"]
            done = "accepted" if row["outcome"] == "success" else f"not accepted ({words})"
            text += f" Follow-up call to accept it: {done}" + (f": {row['summary']}" if row.get("summary") else "")
            text = text.rstrip(".") + "."
    elif best.then == "report_only":
        text += " Nothing was booked: the plan asked only for the choice."
    return text
