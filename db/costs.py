"""Usage records, campaign spend and budgets, and the cost views (tenant-scoped, like db/repo.py).

`record_usage` is the one writer: it inserts a usage_records row, adds its cost to the campaign's
`spent_microusd` in the same transaction, and, when that reaches the campaign's budget, pauses the campaign
(status paused, pause_reason budget_spent) and notifies its owner -- all in the caller's transaction, so a
spend and the pause it causes are one change. The scheduler claims tasks of active campaigns only, so from that
commit on nothing more of the campaign is dialed; calls in progress go on and their cost is still recorded.

Functions take an AsyncSession and do not commit; the caller owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, exists, func, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession

from db import repo
from db.models import TERMINAL_TASK_STATUSES, Call, Campaign, CampaignStatus, PauseReason, Task, UsageKind, UsageRecord
from db.typed import rows_changed
from db.types import utcnow
from opendeep.prices import Priced, TokenUsage, format_usd

BUDGET_NOTIFICATION = "campaign.budget_spent"


@dataclass(frozen=True)
class UsageEntry:
    """One usage to record: what it was for, the model, its tokens (or seconds) and what it cost."""

    kind: UsageKind
    model: str
    usage: TokenUsage
    priced: Priced
    seconds: int = 0   # trunk: answered seconds (duration-billed models carry theirs in usage.seconds)


@dataclass(frozen=True)
class BudgetStop:
    """This record made the campaign reach its budget: it is now paused."""

    user_id: int
    campaign_id: int
    spent_microusd: int
    budget_microusd: int


@dataclass(frozen=True)
class Scope:
    """Whom a usage served: always the user; the campaign, task, call or chat when there is one."""

    user_id: int
    campaign_id: int | None = None
    task_id: int | None = None
    call_id: int | None = None
    chat_id: int | None = None


async def call_scope(session: AsyncSession, user_id: int, call_id: int) -> Scope | None:
    """The user's call with its task and campaign (None if the call is not theirs)."""
    row = (await session.execute(
        select(Task.id, Task.campaign_id).join(Call, Call.task_id == Task.id)
        .where(Call.id == call_id, Call.user_id == user_id, Task.user_id == user_id))).first()
    return Scope(user_id, row.campaign_id, row.id, call_id) if row else None


async def record_usage(session: AsyncSession, scope: Scope, entry: UsageEntry,
                       at: datetime | None = None) -> BudgetStop | None:
    """Store one usage; add its cost to the campaign's spend; pause the campaign if that reaches its budget."""
    usage = entry.usage
    priced = entry.priced
    session.add(UsageRecord(
        user_id=scope.user_id, campaign_id=scope.campaign_id, task_id=scope.task_id, call_id=scope.call_id,
        chat_id=scope.chat_id, kind=entry.kind, model=entry.model[:100], text_in=usage.text_in,
        text_cached_in=usage.text_cached_in, text_out=usage.text_out, audio_in=usage.audio_in,
        audio_cached_in=usage.audio_cached_in, audio_out=usage.audio_out,
        seconds=entry.seconds or round(usage.seconds), cost_microusd=priced.cost_microusd,
        price={"name": priced.price_name, "prices": priced.price} if priced.price is not None else None,
        unpriced_reason=priced.unpriced_reason[:200] or None, at=at or utcnow()))
    if scope.campaign_id is None or not priced.cost_microusd:
        await session.flush()
        return None
    spent = (await session.execute(
        update(Campaign).where(Campaign.id == scope.campaign_id, Campaign.user_id == scope.user_id)
        .values(spent_microusd=Campaign.spent_microusd + priced.cost_microusd)
        .returning(Campaign.spent_microusd, Campaign.budget_microusd))).first()
    if spent is None or spent.budget_microusd is None or spent.spent_microusd < spent.budget_microusd:
        return None
    return await pause_if_budget_spent(session, scope.user_id, scope.campaign_id)


async def pause_if_budget_spent(session: AsyncSession, user_id: int, campaign_id: int) -> BudgetStop | None:
    """Pause the active campaign if its spend has reached its budget while it still has tasks to call, and tell
    its owner (once: only the transaction whose conditional UPDATE moves it does)."""
    open_task = exists().where(Task.campaign_id == campaign_id, Task.user_id == user_id,
                               Task.status.not_in(list(TERMINAL_TASK_STATUSES)))
    result = await session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.user_id == user_id, Campaign.status == CampaignStatus.ACTIVE,
               Campaign.budget_microusd.is_not(None), Campaign.spent_microusd >= Campaign.budget_microusd,
               open_task)
        .values(status=CampaignStatus.PAUSED, pause_reason=PauseReason.BUDGET_SPENT))
    if rows_changed(result) != 1:
        return None
    name, spent, budget = (await session.execute(
        select(Campaign.name, Campaign.spent_microusd, Campaign.budget_microusd)
        .where(Campaign.id == campaign_id, Campaign.user_id == user_id))).one()
    await repo.add_notification(
        session, user_id, BUDGET_NOTIFICATION,
        f"Campaign \u201c{name}\u201d is paused: its budget of {format_usd(budget, 2)} is spent "
        f"({format_usd(spent, 2)}). Calls in progress finish; raise the budget to resume it.",
        {"campaign_id": campaign_id, "spent_microusd": spent, "budget_microusd": budget})
    assert budget is not None   # the UPDATE above matched only a campaign with a budget
    return BudgetStop(user_id, campaign_id, spent, budget)


class BudgetError(ValueError):
    """A budget change that cannot be applied; `code` is stable (not_found, finished)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


async def set_budget(session: AsyncSession, user_id: int, campaign_id: int,
                     budget_microusd: int | None) -> tuple[Campaign, BudgetStop | None]:
    """Set (or with None remove) the user's campaign budget. A budget already spent pauses an active campaign at
    once; raising it leaves a paused campaign paused (the user resumes it) but lets it be resumed."""
    campaign = await repo.get_campaign(session, user_id, campaign_id)
    if campaign is None:
        raise BudgetError("not_found", f"campaign {campaign_id} not found")
    if campaign.status in (CampaignStatus.COMPLETED, CampaignStatus.CANCELLED):
        raise BudgetError("finished", f"campaign {campaign_id} is {campaign.status.value}: nothing more is dialed")
    await session.execute(update(Campaign).where(Campaign.id == campaign_id, Campaign.user_id == user_id)
                          .values(budget_microusd=budget_microusd))
    stop = await pause_if_budget_spent(session, user_id, campaign_id)
    await session.refresh(campaign)
    return campaign, stop


def budget_refusal(campaign: Campaign) -> str | None:
    """Why this campaign may not be resumed now (its budget is spent), or None."""
    if campaign.budget_microusd is not None and campaign.spent_microusd >= campaign.budget_microusd:
        return (f"its budget of {format_usd(campaign.budget_microusd, 2)} is spent "
                f"({format_usd(campaign.spent_microusd, 2)}); raise the budget first")
    return None


async def clear_pause_reason(session: AsyncSession, user_id: int, campaign_id: int) -> None:
    """The campaign was resumed: it is no longer paused for its budget."""
    await session.execute(update(Campaign).where(Campaign.id == campaign_id, Campaign.user_id == user_id)
                          .values(pause_reason=None))


# ---------------------------------------------------------------- what the pages show

# The cost of a group of usage records: COALESCE makes it never NULL, which type_coerce tells the type checker
# (no CAST in the SQL).
_COST_TOTAL = type_coerce(func.coalesce(func.sum(UsageRecord.cost_microusd), 0), BigInteger)
_TOKEN_COLUMNS = ("text_in", "text_cached_in", "text_out", "audio_in", "audio_cached_in", "audio_out", "seconds")


def _totals_query(user_id: int):
    columns = [func.coalesce(func.sum(getattr(UsageRecord, c)), 0).label(c) for c in _TOKEN_COLUMNS]
    return select(UsageRecord.kind, UsageRecord.model, *columns,
                  func.coalesce(func.sum(UsageRecord.cost_microusd), 0).label("cost_microusd"),
                  func.count(UsageRecord.id).label("records"),
                  func.count(UsageRecord.id).filter(UsageRecord.cost_microusd.is_(None)).label("unpriced")
                  ).where(UsageRecord.user_id == user_id).group_by(UsageRecord.kind, UsageRecord.model)


def _breakdown(rows) -> dict[str, Any]:
    lines = []
    total = 0
    unpriced = 0
    for row in rows:
        cost = int(row.cost_microusd)
        total += cost
        unpriced += int(row.unpriced)
        lines.append({"kind": row.kind.value, "model": row.model, "cost_microusd": cost, "cost": format_usd(cost),
                      "records": int(row.records), "unpriced_records": int(row.unpriced),
                      **{c: int(getattr(row, c)) for c in _TOKEN_COLUMNS}})
    lines.sort(key=lambda line: (list(UsageKind).index(UsageKind(line["kind"])), line["model"]))
    trunk_seconds = sum(line["seconds"] for line in lines if line["kind"] == UsageKind.TRUNK.value)
    model_cost = sum(line["cost_microusd"] for line in lines if line["kind"] != UsageKind.TRUNK.value)
    return {"total_microusd": total, "total": format_usd(total), "model_microusd": model_cost,
            "trunk_microusd": total - model_cost, "trunk_seconds": trunk_seconds,
            "trunk_minutes": round(trunk_seconds / 60, 2), "unpriced_records": unpriced, "lines": lines}


async def call_costs(session: AsyncSession, user_id: int, call_id: int) -> dict[str, Any]:
    """The user's call's usage and cost by kind and model (empty if the call is not theirs)."""
    return _breakdown(await session.execute(_totals_query(user_id).where(UsageRecord.call_id == call_id)))


async def task_costs(session: AsyncSession, user_id: int, task_id: int) -> dict[str, Any]:
    """The user's task's usage and cost (all its calls and their analyses)."""
    return _breakdown(await session.execute(_totals_query(user_id).where(UsageRecord.task_id == task_id)))


async def campaign_costs(session: AsyncSession, user_id: int, campaign_id: int) -> dict[str, Any] | None:
    """The user's campaign's budget, spend and its breakdown, with each task's total; None if not theirs."""
    campaign = await repo.get_campaign(session, user_id, campaign_id)
    if campaign is None:
        return None
    breakdown = _breakdown(await session.execute(
        _totals_query(user_id).where(UsageRecord.campaign_id == campaign_id)))
    per_task = await session.execute(
        select(UsageRecord.task_id, _COST_TOTAL)
        .where(UsageRecord.user_id == user_id, UsageRecord.campaign_id == campaign_id,
               UsageRecord.task_id.is_not(None)).group_by(UsageRecord.task_id))
    return {**breakdown, **budget_view(campaign),
            "tasks": {task_id: int(cost) for task_id, cost in per_task if task_id is not None}}


def budget_view(campaign: Campaign) -> dict[str, Any]:
    """A campaign's budget state for the pages and the API."""
    budget, spent = campaign.budget_microusd, campaign.spent_microusd or 0
    return {"budget_microusd": budget, "budget": format_usd(budget, 2) if budget is not None else None,
            "spent_microusd": spent, "spent": format_usd(spent),
            "budget_spent": budget is not None and spent >= budget,
            "paused_for_budget": campaign.status is CampaignStatus.PAUSED
            and campaign.pause_reason is PauseReason.BUDGET_SPENT}


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """'2026-12' -> [2026-12-01, 2027-01-01) in UTC; ValueError for anything else."""
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"month must be YYYY-MM, not {month[:20]!r}") from None
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


async def month_costs(session: AsyncSession, user_id: int, month: str) -> dict[str, Any]:
    """The user's usage and cost in a calendar month (UTC): totals by kind and model, and by campaign."""
    start, end = month_bounds(month)
    in_month = (UsageRecord.at >= start, UsageRecord.at < end)
    breakdown = _breakdown(await session.execute(_totals_query(user_id).where(*in_month)))
    rows = await session.execute(
        select(UsageRecord.campaign_id, Campaign.name, _COST_TOTAL,
               func.coalesce(func.sum(UsageRecord.seconds).filter(UsageRecord.kind == UsageKind.TRUNK), 0))
        .outerjoin(Campaign, (Campaign.id == UsageRecord.campaign_id) & (Campaign.user_id == user_id))
        .where(UsageRecord.user_id == user_id, *in_month)
        .group_by(UsageRecord.campaign_id, Campaign.name).order_by(UsageRecord.campaign_id))
    campaigns = [{"campaign_id": campaign_id, "name": name if campaign_id else "planning chats",
                  "cost_microusd": int(cost), "cost": format_usd(int(cost)), "trunk_seconds": int(seconds)}
                 for campaign_id, name, cost, seconds in rows]
    return {"month": month, "from": start.isoformat(), "to": end.isoformat(), **breakdown, "campaigns": campaigns}
