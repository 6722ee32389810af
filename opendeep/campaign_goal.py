"""A campaign's goal: what it is for, and keeping an until-one-succeeds campaign to it.

`each_target` (ask all 40 shops): every target is called for its own result; nothing here acts on it.

`best_of` (the best of several offers): every target is called for an offer, then the best is chosen; see
opendeep/best_of.py.

`until_one_succeeds` (book with one of three dentists): the targets are called in the plan's order,
`parallel_calls` at a time; the others wait `held` (the scheduler never claims a held task). Each pass of
`keep_goals`, per such campaign:
- once a task has succeeded (the analyzer's verdict `success`), every other unfinished task is cancelled with
  that reason: a held or scheduled one is never dialed; a call the AI is on is wrapped up politely (the call AI
  is told to thank the callee, withdraw the request and end the call: audiosocket/wrap_up.py); a call still
  ringing is hung up;
- otherwise, when fewer than `parallel_calls` targets are in play (unfinished and not held), the next held
  targets are released, due now, carrying what earlier targets' partial outcomes learned (`context`, which the
  call AI's instructions include).

Every move is a conditional UPDATE (on the status read), so two passes (the after-call loop and the lifecycle
manager, or two processes) never cancel or release a task twice. The decision is rule-based: the judgement of
what a call achieved is the post-call analyzer's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import repo, task_life
from db.models import Call, CallStatus, Campaign, CampaignGoal, CampaignStatus, Task, TaskStatus
from db.task_life import LIVE, OPEN, TaskMove
from db.types import utcnow
from opendeep import best_of

log = logging.getLogger(__name__)

MAX_PARALLEL_CALLS = 3
CARRIED_KEY = "learned_from_other_targets"   # tasks.context key the next target's call AI reads
MAX_CARRIED_CHARS = 1500
WRAP_UP_EVENT = "call.wrap_up"   # EventHub kind: the AudioSocket side tells the call AI to end the call


def parse_goal(value: Any, *, where: str = "goal_type") -> CampaignGoal:
    """The goal from a plan, a form or a query string; ValueError with the accepted values otherwise."""
    try:
        return CampaignGoal(str(value or CampaignGoal.EACH_TARGET.value).strip().lower())
    except ValueError:
        accepted = ", ".join(goal.value for goal in CampaignGoal)
        raise ValueError(f"{where}: {value!r} is not a goal; use one of {accepted}") from None


def describe_goal(goal: CampaignGoal | str, parallel_calls: int = 1, best: best_of.BestOf | None = None) -> str:
    """The goal in words, for the plan page, the campaign page and the summary (`best`: a best-of goal's
    criterion, decider and what follows; opendeep/best_of.py)."""
    goal = CampaignGoal(goal)
    if goal is CampaignGoal.BEST_OF:
        return best_of.describe(best or best_of.BestOf())
    if goal is CampaignGoal.UNTIL_ONE_SUCCEEDS:
        pace = ("one call at a time" if parallel_calls <= 1
                else f"{parallel_calls} calls at a time, the others wait their turn")
        return (f"Until one succeeds: the targets are called in the plan's order ({pace}); as soon as one "
                "succeeds, the others are cancelled and not called.")
    return "Each target: every target is called for its own result."


def held_at_start(goal: CampaignGoal, parallel_calls: int, index: int) -> bool:
    """Whether the index-th target (plan order) waits for its turn when the campaign is created."""
    return goal is CampaignGoal.UNTIL_ONE_SUCCEEDS and index >= max(1, parallel_calls)


def held_on_import(goal: CampaignGoal) -> bool:
    """Imported targets of an until-one-succeeds campaign all start held: the goal keeper releases them in
    order (within a poll), so no import chunk is claimed before its turn."""
    return goal is CampaignGoal.UNTIL_ONE_SUCCEEDS


@dataclass
class GoalPass:
    """What one pass did (counts for logs and tests; live calls for the caller to end)."""

    goals_met: list[int] = field(default_factory=list)        # campaign ids
    cancelled: list[int] = field(default_factory=list)        # task ids
    released: list[int] = field(default_factory=list)         # task ids
    wrap_up: list[tuple[int, int]] = field(default_factory=list)   # (user id, call id): the AI is on the line
    hang_up: list[str] = field(default_factory=list)          # channels of calls still ringing


HangUp = Callable[[str], Awaitable[None]]


async def keep_goals(sessions: async_sessionmaker[AsyncSession], *, events: Any = None, hang_up: HangUp | None = None,
                     now: datetime | None = None) -> GoalPass:
    """One pass over every active or paused until-one-succeeds campaign with unfinished targets (see the module
    docstring). A few indexed queries per campaign, whatever its size: it runs at every after-call poll."""
    now = now or utcnow()
    done = GoalPass()
    async with sessions() as session:
        open_task = exists().where(Task.campaign_id == Campaign.id, Task.status.in_(OPEN))
        # tenant-safe: the goal keeper serves every tenant; each campaign keeps its user_id, and every query
        # after it is _of(campaign)
        campaigns = (await session.scalars(
            select(Campaign).where(Campaign.goal_type == CampaignGoal.UNTIL_ONE_SUCCEEDS,
                                   Campaign.status.in_([CampaignStatus.ACTIVE, CampaignStatus.PAUSED]), open_task)
            .order_by(Campaign.id))).all()
        touched: list[tuple[int, int, list[int]]] = []
        for campaign in campaigns:
            cancelled, released = len(done.cancelled), len(done.released)
            await _keep_one(session, campaign, now, done)
            moved = done.cancelled[cancelled:] + done.released[released:]
            if moved:
                touched.append((campaign.user_id, campaign.id, moved))
        await session.commit()
    if events is not None:
        for user_id, campaign_id, task_ids in touched:
            for task_id in task_ids:
                events.publish(user_id, "task.updated", {"task_id": task_id, "campaign_id": campaign_id})
            events.publish(user_id, "campaign.updated", {"campaign_id": campaign_id, "action": "goal"})
        for user_id, call_id in done.wrap_up:
            events.publish(user_id, WRAP_UP_EVENT, {"call_id": call_id, "reason": "goal met on another call"})
    for channel in done.hang_up:
        if hang_up is None:
            log.info("call on %s rings on after its task was cancelled (no AMI in this process); its call-end "
                     "leaves the task cancelled", channel)
            continue
        try:
            await hang_up(channel)
        except Exception as exc:  # the task stays cancelled either way
            log.warning("hangup of %s after the goal was met failed: %s", channel, exc)
    return done


def _of(campaign: Campaign) -> tuple:
    return Task.user_id == campaign.user_id, Task.campaign_id == campaign.id


def _verdict_is(outcome: str):
    """The analyzer's verdict stored in tasks.result (JSON). The goal is met by a completed task whose verdict is
    `success`; a `partial` one does not meet it (what it learned goes to the next target)."""
    return Task.result["outcome"].as_string() == outcome


async def _keep_one(session: AsyncSession, campaign: Campaign, now: datetime, done: GoalPass) -> None:
    # tenant-safe: _of(campaign) is user_id == campaign.user_id and its campaign_id
    winner = await session.scalar(select(Task).where(*_of(campaign), Task.status == TaskStatus.COMPLETED,
                                                     _verdict_is("success")).order_by(Task.id).limit(1))
    if winner is not None:
        await _goal_met(session, campaign, winner, done)
    elif campaign.status is CampaignStatus.ACTIVE:
        await _release_next(session, campaign, now, done)


async def _goal_met(session: AsyncSession, campaign: Campaign, winner: Task, done: GoalPass) -> None:
    """Cancel every unfinished target, in chunks of repo.BULK_CHUNK_ROWS, each its own short transaction (as the
    campaign controls do: a 10,000-target campaign never holds SQLite's write lock for long). Each move is
    conditional on the task being as read, so a task whose call ended meanwhile is seen afresh next pass."""
    if campaign.goal_met_task_id is None:
        campaign.goal_met_task_id = winner.id
        done.goals_met.append(campaign.id)
        log.info("campaign %s: goal met by task %s (%s)", campaign.id, winner.id, winner.target_name)
    reason = f"the goal was met with {winner.target_name}"
    after = 0
    while True:
        chunk = await repo.task_states(session, campaign.user_id, campaign_id=campaign.id, statuses=OPEN,
                                       after_id=after, limit=repo.BULK_CHUNK_ROWS)
        moves = [TaskMove(row.id, row.updated_at, TaskStatus.CANCELLED, row.next_action_time, was=row.status)
                 for row in chunk]
        moved = set(await task_life.move_many(session, campaign.user_id, moves, reason, "goal.cancelled"))
        await task_life.clear_held(session, campaign.user_id, moved)   # a cancelled target waits for nothing
        for row in chunk:
            if row.id in moved and row.status in LIVE:
                await _end_live_calls(session, campaign.user_id, row.id, reason, done)
        await session.commit()
        done.cancelled += sorted(moved)
        if len(chunk) < repo.BULK_CHUNK_ROWS:
            return
        after = chunk[-1].id


async def _end_live_calls(session: AsyncSession, user_id: int, task_id: int, reason: str, done: GoalPass) -> None:
    for call in await repo.list_calls(session, user_id, task_id):
        if call.status is CallStatus.ENDED:
            continue
        # Recorded for every open call: one answered later (it was ringing) is wrapped up as soon as its AI
        # connects. (Not yet at call-start: FastAGI refuses to dial a cancelled task.)
        await repo.record_call_event(session, user_id, call.id, "goal.wrap_up", {"reason": reason})
        if call.bridged_to_ai or call.answered_at is not None:
            done.wrap_up.append((user_id, call.id))
        elif call.channel:
            done.hang_up.append(call.channel)


async def _release_next(session: AsyncSession, campaign: Campaign, now: datetime, done: GoalPass) -> None:
    # tenant-safe: _of(campaign) is user_id == campaign.user_id and its campaign_id
    in_play = await session.scalar(select(func.count(Task.id)).where(*_of(campaign), Task.status.in_(OPEN),
                                                                     Task.held.is_(False)))
    free = max(1, campaign.parallel_calls) - (in_play or 0)
    if free <= 0:
        return
    waiting = (await session.execute(   # plan order: task id
        select(Task.id, Task.user_id, Task.status, Task.context).where(*_of(campaign), Task.status.in_(OPEN),
                                                                       Task.held.is_(True))
        .order_by(Task.id).limit(free))).all()
    if not waiting:
        return
    terminal = [status for status in TaskStatus if status.is_terminal]
    # tenant-safe: _of(campaign) is user_id == campaign.user_id and its campaign_id
    partial = (await session.scalars(select(Task).where(*_of(campaign), Task.status.in_(terminal),
                                                        _verdict_is("partial")).order_by(Task.id))).all()
    carried = carried_learnings(list(partial))
    # tenant-safe: _of(campaign) is user_id == campaign.user_id and its campaign_id
    previous = await session.scalar(select(Task.target_name).where(*_of(campaign), Task.status.in_(terminal))
                                    .order_by(Task.id.desc()).limit(1))
    reason = f"its turn: {previous} did not succeed" if previous else "its turn"
    for task_id, user_id, was, context in waiting:
        if await task_life.release_held(
                session, user_id, task_id, was=was, reason=reason, payload={"carried": bool(carried)},
                next_action_time=now if was is TaskStatus.PENDING else None,   # a task paused on its own keeps it
                context={**(context or {}), CARRIED_KEY: carried} if carried else None):
            done.released.append(task_id)


def carried_learnings(finished: list[Task]) -> str:
    """What earlier targets' partial outcomes learned, one line each, for the next target's call AI."""
    lines = []
    for task in finished:
        result = task.result or {}
        if result.get("outcome") != "partial":
            continue
        line = f"{task.target_name}: {str(result.get('summary') or '').strip()}"
        facts = result.get("data") or {}
        if isinstance(facts, dict) and facts:
            line += " Facts: " + ", ".join(f"{key}={value}" for key, value in facts.items()) + "."
        lines.append(line)
    text = "\n".join(lines)
    return text[-MAX_CARRIED_CHARS:] if len(text) > MAX_CARRIED_CHARS else text


async def live_call_ids(session: AsyncSession, user_id: int, task_id: int) -> list[int]:
    """Calls of this task not yet ended (the edit controls refuse a second dial while one exists)."""
    rows = await session.scalars(select(Call.id).where(Call.user_id == user_id, Call.task_id == task_id,
                                                       Call.status != CallStatus.ENDED))
    return list(rows.all())
