"""Confirm a plan: the campaign and all its tasks are written in one transaction, exactly once per source key.

The source key is derived from the chat and the plan's fingerprint (or given by an API client), and
`campaigns.source_key` is unique per user: a double click, a retried request or two racing requests all end
with one campaign. The loser of a race hits the unique constraint, rolls back, and returns the winner's row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import repo
from db.models import Campaign, CampaignGoal, ChatSession, Task, VoicemailAction
from opendeep.best_of import from_plan as best_of_plan
from opendeep.campaign_goal import held_at_start, parse_goal
from opendeep.events import EventHub
from opendeep.prices import usd_to_microusd
from webui.plan import validate_plan, voicemail_message_for

log = logging.getLogger(__name__)

MAX_SOURCE_KEY = 64


class PlanRejected(ValueError):
    """The plan failed validation; `errors` lists why (nothing was written)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass
class Confirmation:
    campaign: Campaign
    created: bool          # False: this key had already created the campaign (double click)
    task_ids: list[int]


def chat_source_key(chat_id: int, fingerprint: str) -> str:
    """The idempotency key of confirming this plan from this chat."""
    return f"chat-{chat_id}-{fingerprint}"[:MAX_SOURCE_KEY]


async def confirm_plan(sessions: async_sessionmaker[AsyncSession], user_id: int, plan: dict[str, Any],
                       source_key: str, *, chat_id: int | None = None,
                       events: EventHub | None = None, default_region: str | None = None) -> Confirmation:
    """Create the campaign and its tasks (one transaction), or return the one this key already created.

    Raises PlanRejected for an invalid plan: plans are checked again here, whatever the caller did before.
    """
    if not source_key or len(source_key) > MAX_SOURCE_KEY:
        raise ValueError(f"source key must be 1 to {MAX_SOURCE_KEY} characters")
    check = validate_plan(plan, default_region)
    if not check.ok:
        raise PlanRejected(check.errors)
    assert check.plan is not None
    plan = check.plan
    async with sessions() as session:
        existing = await repo.get_campaign_by_source_key(session, user_id, source_key)
        if existing is not None:
            return await _existing(session, user_id, existing)
        try:
            campaign, tasks = await _write(session, user_id, plan, source_key, chat_id)
            await session.commit()
        except IntegrityError:
            # Someone confirmed the same key between our check and our insert: theirs stands.
            await session.rollback()
            existing = await repo.get_campaign_by_source_key(session, user_id, source_key)
            if existing is None:
                raise
            return await _existing(session, user_id, existing)
    log.info("user %s confirmed campaign %s with %d task(s)", user_id, campaign.id, len(plan["targets"]))
    if events is not None:
        for task in tasks:
            events.publish(user_id, "task.updated", {"task_id": task.id, "campaign_id": campaign.id,
                                                     "status": task.status.value})
    return Confirmation(campaign, True, [task.id for task in tasks])


async def _existing(session: AsyncSession, user_id: int, campaign: Campaign) -> Confirmation:
    tasks = await repo.list_tasks(session, user_id, campaign.id)
    return Confirmation(campaign, False, [task.id for task in tasks])


async def _write(session: AsyncSession, user_id: int, plan: dict[str, Any], source_key: str,
                 chat_id: int | None) -> tuple[Campaign, list[Task]]:
    window = plan["calling_window"]
    campaign = await repo.create_campaign(
        session, user_id, name=plan["name"], goal=plan["goal"], master_prompt=plan.get("master_prompt", ""),
        window_start=_hhmm(window["start"]), window_end=_hhmm(window["end"]), plan=plan, source_key=source_key,
    )
    campaign.voicemail_action = VoicemailAction(plan["voicemail"]["action"])
    campaign.budget_microusd = usd_to_microusd(plan["budget_usd"]) if plan.get("budget_usd") else None
    goal = parse_goal(plan.get("goal_type"))
    campaign.goal_type, campaign.parallel_calls = goal, int(plan.get("parallel_calls", 1))
    if goal is CampaignGoal.BEST_OF:   # what "best" means, who decides, what follows (opendeep/best_of.py)
        best = best_of_plan(plan)
        campaign.best_criterion, campaign.best_decide, campaign.best_then = best.criterion, best.decide, best.then
    tasks = []
    for index, target in enumerate(plan["targets"]):
        task = await repo.add_task(
            session, user_id, campaign.id, target_name=target["name"], phone_number=target["phone_number"],
            objective=target["objective"], context=target.get("context") or {},
            language=target.get("language", "en"),
            max_attempts=target.get("max_attempts", plan["max_attempts"]),
        )
        task.voicemail_message = voicemail_message_for(plan, target)
        # Until one succeeds: the targets after the first `parallel_calls` wait their turn (opendeep/campaign_goal).
        task.held = held_at_start(goal, campaign.parallel_calls, index)
        tasks.append(task)
    if chat_id is not None:
        chat = await repo.get_chat_session(session, user_id, chat_id)
        if isinstance(chat, ChatSession):
            chat.campaign_id = campaign.id
    await session.flush()
    return campaign, tasks


def _hhmm(value: str) -> str:
    hours, minutes = value.split(":")
    return f"{int(hours):02d}:{minutes}"
