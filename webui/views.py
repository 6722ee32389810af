"""What the pages and the JSON API show, as plain dicts: one loader per screen, used by both.

The campaign detail is loaded in a fixed number of queries (tasks, their calls, the calls' transcripts and
events, the tasks' events), each filtered on the user, so a large campaign refreshes quickly on live updates.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from db import costs, repo
from db.models import (
    Call,
    CallEvent,
    CallTranscript,
    Campaign,
    CampaignGoal,
    CampaignStatus,
    ChatRole,
    FeedbackRequest,
    Task,
    TaskEvent,
    TaskStatus,
)
from opendeep import best_of
from opendeep.campaign_goal import describe_goal
from webui.controls import LIVE, PAUSABLE
from webui.times import format_when


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def next_action(task: Task) -> str:
    """A sentence for the "next action" column."""
    if task.held and not task.status.is_terminal:   # until one succeeds (opendeep/campaign_goal.py)
        return "waits its turn: called only if the targets before it do not succeed"
    if task.status is TaskStatus.ON_HOLD and "paused" in (task.context or {}):
        return "paused — resume to schedule it again"
    if task.status in PAUSABLE:
        return f"call at {format_when(task.next_action_time)} (attempt {task.attempt_count + 1} " \
               f"of {task.max_attempts})"
    if task.status is TaskStatus.QUEUED:
        return "dialing now"
    if task.status is TaskStatus.IN_PROGRESS:
        return task.status_reason or "call in progress"
    return "none"


def campaign_dict(campaign: Campaign, counts: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "id": campaign.id, "name": campaign.name, "goal": campaign.goal, "status": campaign.status.value,
        "window_start": campaign.window_start, "window_end": campaign.window_end,
        "created_at": _iso(campaign.created_at), "finished_at": _iso(campaign.finished_at),
        "has_summary": campaign.summary is not None or bool(campaign.summary_text),
        "task_counts": counts or {},
        "pause_reason": campaign.pause_reason.value if campaign.pause_reason else None,
        **goal_fields(campaign),
    }


def task_dict(task: Task) -> dict[str, Any]:
    return {
        "id": task.id, "campaign_id": task.campaign_id, "target_name": task.target_name,
        "phone_number": task.phone_number, "objective": task.objective, "status": task.status.value,
        "status_reason": task.status_reason, "attempt_count": task.attempt_count, "max_attempts": task.max_attempts,
        "next_action_time": _iso(task.next_action_time), "next_action": next_action(task),
        "paused": "paused" in (task.context or {}), "live": task.status in LIVE,
        "terminal": task.status.is_terminal, "result": task.result or {}, "held": task.held,
    }


def call_dict(call: Call) -> dict[str, Any]:
    return {
        "id": call.id, "task_id": call.task_id, "attempt_number": call.attempt_number, "status": call.status.value,
        "direction": call.direction.value if call.direction else "outbound",
        "outcome": call.outcome.value if call.outcome else None, "dialed_number": call.dialed_number,
        "dial_status": call.dial_status, "hangup_cause": call.hangup_cause,
        "started_at": _iso(call.started_at or call.created_at), "answered_at": _iso(call.answered_at),
        "ended_at": _iso(call.ended_at), "duration_seconds": call.duration_seconds, "analysis": call.analysis,
    }


def transcript_dict(line: CallTranscript) -> dict[str, Any]:
    return {"speaker": line.speaker.value, "text": line.text, "offset_ms": line.offset_ms}


async def task_counts(session: AsyncSession, user_id: int, campaign_id: int) -> dict[str, int]:
    """How many of the campaign's tasks are in each status."""
    rows = await session.execute(
        select(Task.status, func.count()).where(Task.user_id == user_id, Task.campaign_id == campaign_id)
        .group_by(Task.status))
    return {status.value: count for status, count in rows}


async def list_campaigns(session: AsyncSession, user_id: int) -> list[dict[str, Any]]:
    campaigns = await repo.list_campaigns(session, user_id)
    rows = await session.execute(
        select(Task.campaign_id, Task.status, func.count()).where(Task.user_id == user_id)
        .group_by(Task.campaign_id, Task.status)
    )
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    for campaign_id, status, count in rows:
        counts[campaign_id][status.value] = count
    return [campaign_dict(c, counts.get(c.id, {})) for c in campaigns]


def targets_refusal(campaign: Campaign) -> str | None:
    """Why targets cannot be added to this campaign now, or None: a finished campaign stays finished."""
    if campaign.status in (CampaignStatus.COMPLETED, CampaignStatus.CANCELLED):
        return (f"the campaign is {campaign.status.value}: its summary is final. Start a new campaign for these "
                f"targets")
    if campaign.goal_type is CampaignGoal.BEST_OF and campaign.best_decided_at is not None:
        return ("the best offer of this campaign has been chosen: new targets would not be compared. Start a new "
                "campaign for these targets")
    return None


def asterisk_state(ami: Any) -> dict[str, Any] | None:
    """Whether calls can be placed now: {"connected", "address"} of the AMI controller, None where this process
    does not run it (`serve --only web`)."""
    if ami is None or ami.connected is None:   # None: no scheduler controller in this process (CallActions)
        return None
    return {"connected": bool(ami.connected), "address": ami.address}


TASKS_PER_PAGE = 100   # the campaign page's task list: a 10,000-task campaign is 100 pages, each a few queries


def page_number(value: str | None) -> int:
    """A `?page=` value as a page number from 1; anything else (missing, junk, zero, huge) is page 1."""
    return int(value) if value and value.isdigit() and 0 < len(value) < 7 and int(value) > 0 else 1


async def task_page_number(session: AsyncSession, user_id: int, campaign_id: int, task_id: int,
                           per_page: int = TASKS_PER_PAGE) -> int:
    """The page of the campaign's task list that shows this task (tasks are listed by id)."""
    before = await session.scalar(select(func.count()).select_from(Task).where(
        Task.user_id == user_id, Task.campaign_id == campaign_id, Task.id < task_id))
    return (before or 0) // per_page + 1


async def campaign_detail(session: AsyncSession, user_id: int, campaign_id: int, page: int = 1,
                          per_page: int = TASKS_PER_PAGE) -> dict[str, Any] | None:
    """The campaign with one page of its tasks (by id), each task's calls (transcript and events) and decisions,
    and the task counts of the whole campaign; None if not theirs. A page past the last shows the last."""
    campaign = await repo.get_campaign(session, user_id, campaign_id)
    if campaign is None:
        return None
    counts = {status.value: count for status, count in await session.execute(
        select(Task.status, func.count()).where(Task.user_id == user_id, Task.campaign_id == campaign_id)
        .group_by(Task.status))}
    total = sum(counts.values())
    pages = max(1, -(-total // per_page))
    page = min(max(page, 1), pages)
    tasks = (await session.scalars(
        select(Task).where(Task.user_id == user_id, Task.campaign_id == campaign_id).order_by(Task.id)
        .offset((page - 1) * per_page).limit(per_page))).all()
    task_ids = [task.id for task in tasks]
    calls = (await session.scalars(
        select(Call).where(Call.user_id == user_id, Call.task_id.in_(task_ids))
        .order_by(Call.task_id, Call.attempt_number, Call.id))).all() if task_ids else []
    call_ids = [call.id for call in calls]
    transcripts: dict[int, list] = defaultdict(list)
    call_events: dict[int, list] = defaultdict(list)
    task_events: dict[int, list] = defaultdict(list)
    if call_ids:
        for line in await session.scalars(
                select(CallTranscript).where(CallTranscript.user_id == user_id, CallTranscript.call_id.in_(call_ids))
                .order_by(CallTranscript.offset_ms, CallTranscript.id)):
            transcripts[line.call_id].append(transcript_dict(line))
        for event in await session.scalars(
                select(CallEvent).where(CallEvent.user_id == user_id, CallEvent.call_id.in_(call_ids))
                .order_by(CallEvent.at, CallEvent.id)):
            call_events[event.call_id].append({"type": event.type, "payload": event.payload, "at": _iso(event.at)})
    if task_ids:
        for task_event in await session.scalars(
                select(TaskEvent).where(TaskEvent.user_id == user_id, TaskEvent.task_id.in_(task_ids))
                .order_by(TaskEvent.id)):
            task_events[task_event.task_id].append({"type": task_event.type, "reason": task_event.reason,
                                                    "at": _iso(task_event.at)})
    calls_by_task: dict[int, list] = defaultdict(list)
    for call in calls:
        calls_by_task[call.task_id].append({**call_dict(call), "transcript": transcripts[call.id],
                                            "events": call_events[call.id]})
    return {
        "campaign": {**campaign_dict(campaign, counts), "plan": campaign.plan,
                     "master_prompt": campaign.master_prompt},
        "best_of": await best_of.state(session, campaign),   # the offers and the choice (None: another goal)
        "tasks": [{**task_dict(task), "calls": calls_by_task[task.id], "events": task_events[task.id]}
                  for task in tasks],
        "costs": await costs.campaign_costs(session, user_id, campaign_id),
        "page": {"number": page, "pages": pages, "per_page": per_page, "total_tasks": total,
                 "first_task": (page - 1) * per_page + 1 if tasks else 0,
                 "last_task": (page - 1) * per_page + len(tasks)},
    }


async def call_detail(session: AsyncSession, user_id: int, call_id: int) -> dict[str, Any] | None:
    call = await repo.get_call(session, user_id, call_id)
    if call is None:
        return None
    transcript = await repo.list_transcript(session, user_id, call_id)
    events = await repo.list_call_events(session, user_id, call_id)
    return {**call_dict(call), "transcript": [transcript_dict(line) for line in transcript],
            "events": [{"type": e.type, "payload": e.payload, "at": _iso(e.at)} for e in events],
            "costs": await costs.call_costs(session, user_id, call_id)}


async def feedback_card(session: AsyncSession, user_id: int, request: FeedbackRequest) -> dict[str, Any]:
    """A HITL question with what the user needs to answer it: who is being called, why, and what was said."""
    call = await repo.get_call(session, user_id, request.call_id)
    task = await repo.get_task(session, user_id, call.task_id) if call else None
    campaign = await repo.get_campaign(session, user_id, task.campaign_id) if task else None
    transcript = await repo.list_transcript(session, user_id, request.call_id) if call else []
    return {
        "request_id": request.id, "question": request.question, "status": request.status.value,
        "answer": request.answer, "asked_at": _iso(request.asked_at), "timeout_at": _iso(request.timeout_at),
        "call_id": request.call_id,
        "task": task_dict(task) if task else None,
        "campaign": {"id": campaign.id, "name": campaign.name, "goal": campaign.goal} if campaign else None,
        "transcript": [transcript_dict(line) for line in transcript],
    }


async def chat_view(session: AsyncSession, user_id: int, chat_id: int) -> dict[str, Any] | None:
    """A chat's visible messages, its latest plan and any open follow-up questions."""
    chat = await repo.get_chat_session(session, user_id, chat_id)
    if chat is None:
        return None
    messages = []
    questions: list[str] = []
    for row in await repo.list_chat_messages(session, user_id, chat_id):
        if row.role is ChatRole.USER:
            questions = []
            messages.append({"role": "user", "text": row.content})
        elif row.role is ChatRole.ASSISTANT:
            for call in row.tool_calls or []:
                questions = _questions(call) or questions
                if call["name"] in ("get_authoritative_business_info", "search_internet"):
                    messages.append({"role": "tool", "text": f"looked up: {_query(call)}"})
            if row.content:
                messages.append({"role": "assistant", "text": row.content})
        elif row.role is ChatRole.SYSTEM:
            messages.append({"role": "notice", "text": row.content})
    return {"id": chat.id, "title": chat.title, "plan": chat.plan, "campaign_id": chat.campaign_id,
            "created_at": _iso(chat.created_at), "messages": messages, "questions": questions}


def _questions(call: dict[str, Any]) -> list[str]:
    if call.get("name") != "ask_follow_up_questions":
        return []
    try:
        return [str(q) for q in json.loads(call.get("arguments") or "{}").get("questions", [])]
    except (ValueError, AttributeError):
        return []


def _query(call: dict[str, Any]) -> str:
    try:
        args = json.loads(call.get("arguments") or "{}")
        return " ".join(str(args.get(key, "")) for key in ("query", "location")).strip()
    except (ValueError, AttributeError):
        return "?"


def goal_fields(campaign: Campaign) -> dict[str, Any]:
    """The campaign's goal and editable settings (campaign page, API)."""
    goal = campaign.goal_type or CampaignGoal.EACH_TARGET
    return {"goal_type": goal.value, "parallel_calls": campaign.parallel_calls or 1,
            "goal_in_words": describe_goal(goal, campaign.parallel_calls or 1, best_of.settings_of(campaign)),
            # best of several: the user was asked to choose and has not yet (opendeep/best_of.py)
            "waiting_for_choice": campaign.best_asked_at is not None and campaign.best_decided_at is None
            and best_of.awaits_choice(campaign),
            "goal_met_task_id": campaign.goal_met_task_id, "caller_id": campaign.caller_id}


PEOPLE_COLUMNS = ("target", "phone_number", "outcome", "learned", "calls_placed", "call_url")


def summary_people(summary: Any) -> list[dict[str, Any]] | None:
    """The summary's per-target table for a person: name, number, outcome in words, what was learned, the
    call's link (None when the summary has no per-target rows: summary_table() shows what it has)."""
    if not isinstance(summary, dict) or not isinstance(summary.get("targets"), list):
        return None
    people = []
    for row in summary["targets"]:
        if not isinstance(row, dict):
            continue
        result = row.get("result")
        learned = str(row.get("summary") or "").strip()
        if isinstance(result, dict) and result:
            learned = (learned + " " if learned else "") + "; ".join(f"{k}: {v}" for k, v in result.items())
        elif result and not isinstance(result, dict):   # a summary written before the per-target facts were a dict
            learned = (learned + " " if learned else "") + str(result)
        if learned == (row.get("reason") or ""):
            learned = ""   # a bare status reason is the outcome, not something learned
        people.append({"target": row.get("target") or "", "phone_number": row.get("phone_number") or "",
                       "outcome": row.get("outcome_words")
                       or str(row.get("outcome") or row.get("status") or "").replace("_", " "),
                       "learned": learned, "calls_placed": row.get("calls_placed", row.get("attempts", 0)),
                       "call_url": row.get("transcript_url") or ""})
    return people


def summary_table(summary: Any) -> tuple[list[str], list[list[Any]]]:
    """The campaign summary's table, whatever JSON shape the summarizer chose: `{"columns": [...], "rows":
    [[...]]}`, a list of row objects, or an object holding one (`rows`, `targets`, `results`, `table`)."""
    if isinstance(summary, dict):
        if isinstance(summary.get("columns"), list) and isinstance(summary.get("rows"), list):
            columns = [str(c) for c in summary["columns"]]
            rows = [row if isinstance(row, list) else [row.get(c) if isinstance(row, dict) else row for c in columns]
                    for row in summary["rows"]]
            return columns, rows
        for key in ("rows", "targets", "results", "table", "tasks"):
            if isinstance(summary.get(key), list):
                return summary_table(summary[key])
        return ["field", "value"], [[key, _cell(value)] for key, value in summary.items()]
    if isinstance(summary, list) and summary:
        if all(isinstance(row, dict) for row in summary):
            columns = []
            for row in summary:
                columns += [str(key) for key in row if str(key) not in columns]
            return columns, [[_cell(row.get(c)) for c in columns] for row in summary]
        return ["value"], [[_cell(row)] for row in summary]
    return [], []


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
            return json.dumps(value, ensure_ascii=False)
    return value
