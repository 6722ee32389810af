"""What the system needs, for the status strip on every page, and what a waiting task waits for.

The strip answers three questions an operator asks first: can calls be placed (Asterisk's AMI connected), can
the AI talk (a model configured, and the last calls the AI took did not fail on it), and how many lines are
busy (the user's calls in progress against MAX_CONCURRENT_CALLS_PER_USER). The model's health is read from
what the product saw on the user's latest calls (the call AI ending one `failed_ai`, the post-call analyzer
giving up on one), never from a request to the model per page view.

`waiting_for` turns a task and that status into one sentence: paused, held, Asterisk down, the calling window
opening at a given time (the callee's and the user's), a line limit, the do-not-call list.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ami_controller.scheduler import next_window_opening
from db.models import Call, CallOutcome, CallStatus
from db.types import utcnow
from opendeep.phone import callee_timezone
from opendeep.settings import CallingWindow, Settings, parse_window
from webui.routing import api, page
from webui.times import format_when, user_zone
from webui.views import asterisk_state

MODEL_LOOKBACK = timedelta(hours=2)   # older AI failures say nothing about the model now
OPEN_CALL_STATUSES = tuple(status for status in CallStatus if status is not CallStatus.ENDED)
_AI_OUTCOMES = (CallOutcome.ANSWERED, CallOutcome.VOICEMAIL, CallOutcome.FAILED_AI)


@dataclass(frozen=True)
class Light:
    """One item of the strip: `state` is ok, warn, bad or unknown; `text` says it in words."""

    name: str
    state: str
    text: str


async def system_status(session: AsyncSession, settings: Settings, ami: Any, user_id: int,
                        now: datetime | None = None) -> dict[str, Any]:
    """The strip's items and the figures `waiting_for` needs, for one user (two small queries)."""
    now = now or utcnow()
    asterisk = asterisk_state(ami)
    # IN the open statuses, not != ENDED: an index on (status, user_id) serves IN; it cannot serve !=.
    in_progress = await session.scalar(
        select(func.count()).select_from(Call).where(Call.status.in_(OPEN_CALL_STATUSES), Call.user_id == user_id))
    # tenant-safe: all tenants' open calls as one number, against MAX_CONCURRENT_CALLS
    everyone = await session.scalar(select(func.count()).select_from(Call)
                                    .where(Call.status.in_(OPEN_CALL_STATUSES)))
    per_user = settings.max_concurrent_calls_per_user
    return {
        "asterisk": asterisk,
        "llm_configured": settings.llm_configured,
        "model_problem": await _model_problem(session, user_id, now),
        "in_progress": int(in_progress or 0), "limit": per_user,
        "lines_full": int(everyone or 0) >= settings.effective_max_concurrent_calls,
        "now": now,
    }


async def _model_problem(session: AsyncSession, user_id: int, now: datetime) -> tuple[str, datetime] | None:
    """What the product last saw of the model, if it was a failure: the call AI (the latest call it took ended
    `failed_ai`) or the post-call analyzer (the latest analysis gave up, its error stored on the call)."""
    since = now - MODEL_LOOKBACK
    last_ai_call = (await session.execute(
        select(Call.outcome, Call.ended_at).where(Call.user_id == user_id, Call.outcome.in_(_AI_OUTCOMES),
                                                  Call.ended_at >= since)
        .order_by(Call.ended_at.desc(), Call.id.desc()).limit(1))).first()
    if last_ai_call is not None and last_ai_call.outcome is CallOutcome.FAILED_AI:
        return "the call AI failed on the last call it took", last_ai_call.ended_at
    last_analysis = (await session.execute(
        select(Call.analysis, Call.analyzed_at).where(Call.user_id == user_id, Call.analyzed_at >= since)
        .order_by(Call.analyzed_at.desc(), Call.id.desc()).limit(1))).first()
    if last_analysis is not None and isinstance(last_analysis.analysis, dict) and last_analysis.analysis.get("error"):
        return "the post-call analysis gave up on the last call", last_analysis.analyzed_at
    return None


def lights(status: dict[str, Any], zone: ZoneInfo) -> list[Light]:
    """The strip, left to right: Asterisk, model, calls."""
    asterisk = status["asterisk"]
    if asterisk is None:
        ami = Light("asterisk", "unknown", "Asterisk: run by another OpenDeep process (see its /healthz)")
    elif asterisk["connected"]:
        ami = Light("asterisk", "ok", "Asterisk connected")
    else:
        ami = Light("asterisk", "bad", f"Asterisk not reachable (AMI at {asterisk['address']}): no calls are "
                                       f"placed until it is back")
    if not status["llm_configured"]:
        model = Light("model", "bad", "Model not configured (set OPENAI_API_KEY or OPENAI_BASE_URL): answered "
                                      "calls cannot talk")
    elif status["model_problem"] is not None:
        what, when = status["model_problem"]
        model = Light("model", "warn", f"Model failing: {what} ({format_when(when, 'minutes', zone)})")
    else:
        model = Light("model", "ok", "Model configured")
    busy = status["in_progress"] >= status["limit"]
    calls = Light("calls", "warn" if busy or status["lines_full"] else "ok",
                  f"Calls in progress {status['in_progress']} / {status['limit']}"
                  + (" (all lines busy)" if status["lines_full"] and not busy else ""))
    return [ami, model, calls]


def _window(campaign: dict[str, Any] | None, settings: Settings) -> CallingWindow:
    if campaign and campaign.get("window_start") and campaign.get("window_end"):
        try:
            return parse_window(f"{campaign['window_start']}-{campaign['window_end']}")
        except ValueError:
            pass   # the scheduler logs it and uses the default too
    return settings.default_calling_window


def _when(value: datetime, zone: ZoneInfo, callee: ZoneInfo) -> str:
    mine = format_when(value, "minutes", zone)
    if callee.key == zone.key:
        return mine
    return f"{mine} ({value.astimezone(callee):%H:%M} callee's time)"


def waiting_for(task: dict[str, Any], campaign: dict[str, Any] | None, status: dict[str, Any] | None,
                settings: Settings, zone: ZoneInfo, dnd_numbers: frozenset[str] | set[str] = frozenset()) -> str:
    """What a task does next, or what it waits for, in one sentence with times in the user's zone (and the
    callee's, where they differ). `task` and `campaign` are the loaders' dicts (webui.views)."""
    state = task["status"]
    if task["terminal"]:
        return "none"
    if state == "queued":
        return "dialing now"
    if state == "in_progress":
        return task.get("status_reason") or "call in progress"
    if task.get("held"):   # until one succeeds (opendeep/campaign_goal.py)
        return "waits its turn: called only if the targets before it do not succeed"
    if task.get("paused"):
        return "paused — resume to schedule it again"
    if campaign and campaign.get("status") == "paused":
        return "waiting: the campaign is paused — resume the campaign"
    if state == "on_hold":
        return f"held: {task.get('status_reason') or 'waiting for your review'}"
    if task["phone_number"] in dnd_numbers:
        return "will not be called: the number is on your do-not-call list"
    now = status["now"] if status else utcnow()
    attempt = f"attempt {task['attempt_count'] + 1} of {task['max_attempts']}"
    due = datetime.fromisoformat(task["next_action_time"]) if task.get("next_action_time") else now
    callee = callee_timezone(task["phone_number"])
    opening = next_window_opening(max(due, now), callee, _window(campaign, settings))
    if opening is not None:
        return (f"waiting: the calling window {_window(campaign, settings)} opens at "
                f"{opening.astimezone(callee):%H:%M} callee's time ({format_when(opening, 'minutes', zone)}) — "
                f"{attempt}")
    if due > now:
        retry = "retry" if state == "retry_scheduled" else "call"
        return f"{retry} at {_when(due, zone, callee)} — {attempt}"
    if status is not None:
        asterisk = status["asterisk"]
        if asterisk is not None and not asterisk["connected"]:
            return f"waiting for Asterisk (AMI at {asterisk['address']} is not connected) — {attempt}"
        if status["in_progress"] >= status["limit"]:
            return (f"waiting for a free line: your {status['limit']} calls at once are in progress "
                    f"(MAX_CONCURRENT_CALLS_PER_USER) — {attempt}")
        if status["lines_full"]:
            return f"waiting for a free line: every line is busy (MAX_CONCURRENT_CALLS) — {attempt}"
    return f"due now: dialing within a few seconds — {attempt}"


async def status_fragment(request: Request) -> Response:
    """The strip alone, for the pages' script to refresh it on live events (every page loads it anyway)."""
    return request.app.state.templates.TemplateResponse(request, "_status.html", {})


async def api_status(request: Request) -> Response:
    """GET /api/status: the strip as JSON (each light's name, state and text; calls in progress and limit)."""
    runtime = request.app.state.runtime
    async with runtime.sessions() as session:
        status = await system_status(session, runtime.settings, runtime.ami, request.state.user_id)
    zone = user_zone(request.session.get("tz"))
    return JSONResponse({"lights": [light.__dict__ for light in lights(status, zone)],
                         "calls_in_progress": status["in_progress"], "calls_limit": status["limit"],
                         "asterisk_connected": status["asterisk"]["connected"] if status["asterisk"] else None,
                         "llm_configured": status["llm_configured"]})


def routes() -> list[Route]:
    return [page("/status", status_fragment), api("/api/status", api_status)]
