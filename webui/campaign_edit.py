"""Edit a campaign (name, calling window, attempts, caller ID) and call one task now or retry it now: a form on
the campaign page and the JSON API (`PATCH /api/campaigns/{id}`, `POST /api/tasks/{id}/call-now|retry-now`).

The rules that keep a call legal and single still apply: a finished campaign takes no changes but its name; a
paused campaign or task must be resumed first; a number on a do-not-call list is refused; the calling window
is the scheduler's (a task made due outside it waits for the window to open, and the answer says when); and a
task being dialed now cannot be dialed again (every move is a conditional UPDATE on the task's status and
updated_at, so of two clicks one wins, and a task the scheduler claimed meanwhile is left alone).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ami_controller.scheduler import next_window_opening, window_for
from db import repo, task_life
from db.models import CampaignGoal, CampaignStatus, Task, TaskStatus
from db.typed import rows_changed
from db.types import utcnow
from opendeep.campaign_goal import live_call_ids
from opendeep.phone import InvalidPhoneNumber, callee_timezone, normalize_e164
from opendeep.runtime import Runtime
from opendeep.settings import parse_window
from webui import views
from webui.pages import _flash, _redirect, _runtime, _text_field
from webui.plan import MAX_ATTEMPTS_LIMIT
from webui.routing import HttpError, api, form_data, json_body, not_found, page

EDITABLE = ("name", "calling_window", "max_attempts", "caller_id")
FINISHED = (CampaignStatus.COMPLETED, CampaignStatus.CANCELLED)
CALLABLE_NOW = (TaskStatus.PENDING, TaskStatus.RETRY_SCHEDULED, TaskStatus.ON_HOLD)
RETRYABLE = (TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.COMPLETED)
_CALLER_NAME = re.compile(r"[A-Za-z0-9 .,'&()-]{1,40}")
_NAMED_CALLER = re.compile(r'\s*"?([^"<>]*?)"?\s*<([^<>]+)>\s*')


@dataclass
class EditRefused(Exception):
    """The change is not allowed now (HTTP 409) or not valid (422, every field's error in `details`)."""

    status: int
    code: str
    message: str
    details: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------- validation


def parse_caller_id(raw: str) -> str | None:
    """'' -> None (the CALLER_ID setting); '+14155550123' or 'Name <+14155550123>' -> the AMI CallerID value."""
    raw = raw.strip()
    if not raw:
        return None
    named = _NAMED_CALLER.fullmatch(raw)
    name, number = (named.group(1).strip(), named.group(2)) if named else ("", raw)
    if name and not _CALLER_NAME.fullmatch(name):
        raise ValueError("caller_id: the name may have 1-40 letters, digits, spaces and . , ' & ( ) -")
    try:
        number = normalize_e164(number)
    except InvalidPhoneNumber as exc:
        raise ValueError(f"caller_id: {exc} (write +14155550123 or Name <+14155550123>)") from None
    return f'"{name}" <{number}>' if name else number


def parse_edit(data: dict[str, Any]) -> dict[str, Any]:
    """The fields to change, validated; EditRefused(422) listing every bad field. Absent fields stay as they are;
    an empty calling_window means DEFAULT_CALLING_WINDOW, an empty caller_id the CALLER_ID setting."""
    unknown = sorted(set(data) - set(EDITABLE) - {"csrf_token"})
    errors = [f"{key}: not a field you can edit (edit {', '.join(EDITABLE)})" for key in unknown]
    changes: dict[str, Any] = {}
    if "name" in data:
        name = str(data["name"] or "").strip()
        if not 1 <= len(name) <= 200:
            errors.append("name: give the campaign a name of 1-200 characters")
        changes["name"] = name
    if "calling_window" in data:
        window = str(data["calling_window"] or "").strip().replace("–", "-")
        if window:
            try:
                parsed = parse_window(window)
                changes["calling_window"] = (f"{parsed.start:%H:%M}", f"{parsed.end:%H:%M}")
            except ValueError as exc:
                errors.append(f"calling_window: {exc} (write it as 09:00-17:00, in the callee's local time)")
        else:
            changes["calling_window"] = (None, None)
    if "max_attempts" in data:
        try:
            attempts = int(str(data["max_attempts"]).strip())
            if not 1 <= attempts <= MAX_ATTEMPTS_LIMIT:
                raise ValueError
            changes["max_attempts"] = attempts
        except (TypeError, ValueError):
            errors.append(f"max_attempts: a whole number from 1 to {MAX_ATTEMPTS_LIMIT}")
    if "caller_id" in data:
        try:
            changes["caller_id"] = parse_caller_id(str(data["caller_id"] or ""))
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        raise EditRefused(422, "invalid_field", "nothing was changed: " + "; ".join(errors), errors)
    if not changes:
        raise EditRefused(422, "invalid_field", f"nothing to change: give one of {', '.join(EDITABLE)}")
    return changes


# ---------------------------------------------------------------- the changes


async def edit_campaign(runtime: Runtime, user_id: int, campaign_id: int, changes: dict[str, Any]) -> str:
    """Apply validated changes to one of the user's campaigns; returns what changed, in words."""
    async with runtime.sessions() as session:
        campaign = await repo.get_campaign(session, user_id, campaign_id)
        if campaign is None:
            raise LookupError(f"campaign {campaign_id} not found")
        if campaign.status in FINISHED and set(changes) - {"name"}:
            raise EditRefused(409, "campaign_finished", f"campaign {campaign_id} is {campaign.status.value}: "
                              "only its name can change")
        said = []
        if "name" in changes and changes["name"] != campaign.name:
            campaign.name = changes["name"]
            said.append(f"renamed to '{campaign.name}'")
        if "calling_window" in changes:
            campaign.window_start, campaign.window_end = changes["calling_window"]
            said.append(f"calling window {campaign.window_start}-{campaign.window_end}" if campaign.window_start
                        else f"calling window: the default ({runtime.settings.default_calling_window})")
        if "max_attempts" in changes:
            # Unfinished tasks only: a finished one keeps the record of what it was allowed.
            result = await session.execute(
                update(Task).where(Task.user_id == user_id, Task.campaign_id == campaign_id,
                                   Task.status.not_in([s for s in TaskStatus if s.is_terminal]))
                .values(max_attempts=changes["max_attempts"], updated_at=utcnow()))
            said.append(f"up to {changes['max_attempts']} attempt(s) for {rows_changed(result)} unfinished task(s)")
        if "caller_id" in changes:
            campaign.caller_id = changes["caller_id"]
            said.append(f"caller ID {campaign.caller_id or 'the default (CALLER_ID)'}")
        await session.commit()
    runtime.events.publish(user_id, "campaign.updated", {"campaign_id": campaign_id, "action": "edit"})
    return f"campaign {campaign_id}: " + ("; ".join(said) if said else "nothing changed")


async def call_task_now(runtime: Runtime, user_id: int, task_id: int, *, retry: bool) -> str:
    """Make one task due now ("call now" for a waiting task, "retry now" for a finished one); returns what
    happens next, in words (when, if the calling window is closed)."""
    now = utcnow()
    async with runtime.sessions() as session:
        task = await repo.get_task(session, user_id, task_id)
        if task is None:
            raise LookupError(f"task {task_id} not found")
        campaign = await repo.get_campaign(session, user_id, task.campaign_id)
        await _check_callable(session, runtime, user_id, task, campaign, retry)
        also: dict[str, Any] = {"held": False}
        if task.attempt_count >= task.max_attempts:
            also["max_attempts"] = task.attempt_count + 1   # the user asks for this call: one more, exactly
        reason = "retry requested by you" if retry else "call requested by you"
        if not await task_life.move(session, user_id, task.id, TaskStatus.PENDING, reason=reason,
                                    only_from=[task.status], unchanged_since=task.updated_at, next_action_time=now,
                                    also=also, event_type="task.retry_now" if retry else "task.call_now"):
            raise EditRefused(409, "changed", f"task {task_id} changed meanwhile (a call may have started); look "
                                              "at it again")
        opening = next_window_opening(now, callee_timezone(task.phone_number), window_for(campaign,
                                                                                           runtime.settings))
        await session.commit()
    task_life.task_updated(runtime.events, user_id, task_id, task.campaign_id, TaskStatus.PENDING)
    what = f"task {task_id} ({task.target_name}) "
    if opening is not None:
        zone = callee_timezone(task.phone_number)
        return what + (f"is outside the calling window; it will be called when the window opens at "
                       f"{opening.astimezone(zone):%Y-%m-%d %H:%M %Z} (callee's time)")
    return what + "will be called within seconds"


async def _check_callable(session, runtime: Runtime, user_id: int, task: Task, campaign, retry: bool) -> None:
    label = f"task {task.id}"
    if campaign.status in FINISHED:
        raise EditRefused(409, "campaign_finished", f"campaign {campaign.id} is {campaign.status.value}: its tasks "
                                                    "are not called any more")
    if campaign.status is CampaignStatus.PAUSED:
        raise EditRefused(409, "campaign_paused", f"campaign {campaign.id} is paused: resume it first")
    if campaign.goal_type is CampaignGoal.UNTIL_ONE_SUCCEEDS and campaign.goal_met_task_id is not None:
        raise EditRefused(409, "goal_met", f"campaign {campaign.id}'s goal was already met (task "
                                           f"{campaign.goal_met_task_id}): no more calls are needed")
    if (campaign.goal_type is CampaignGoal.BEST_OF and campaign.best_decided_at is not None
            and task.id != campaign.best_followup_task_id):   # only the call accepting the chosen offer goes on
        raise EditRefused(409, "choice_made", f"campaign {campaign.id}'s best offer has been chosen: {label} asked "
                                              "for an offer, which is no longer needed")
    if task.status in (TaskStatus.QUEUED, TaskStatus.IN_PROGRESS) or await live_call_ids(session, user_id, task.id):
        raise EditRefused(409, "already_dialing", f"{label} is being called now: it cannot be called twice")
    if "paused" in (task.context or {}):
        raise EditRefused(409, "task_paused", f"{label} is paused: resume it first")
    if task.status is TaskStatus.CANCELLED_DND:
        raise EditRefused(409, "do_not_call", f"{label}: {task.phone_number} is on a do-not-call list")
    checked, tenants = await repo.dnd_check(session, user_id, task.phone_number)
    if checked or tenants >= runtime.settings.global_dnd_tenant_threshold:
        raise EditRefused(409, "do_not_call", f"{label}: {task.phone_number} is on "
                                              f"{'your' if checked else 'the global'} do-not-call list")
    if retry:
        if task.status not in RETRYABLE:
            raise EditRefused(409, "not_finished", f"{label} is {task.status.value}: use 'call now' for a task "
                                                   "that has not finished")
    else:
        if task.status not in CALLABLE_NOW:
            raise EditRefused(409, "finished", f"{label} is {task.status.value}: use 'retry now' to call it again")


# ---------------------------------------------------------------- routes


def _refused(exc: EditRefused) -> HttpError:
    return HttpError(exc.status, exc.code, exc.message, details=exc.details or None)


async def api_edit_campaign(request: Request) -> Response:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise HttpError(400, "invalid_json", "send a JSON object with the fields to change")
    campaign_id = int(request.path_params["campaign_id"])
    try:
        message = await edit_campaign(_runtime(request), request.state.user_id, campaign_id, parse_edit(body))
    except EditRefused as exc:
        raise _refused(exc) from None
    except LookupError:
        raise not_found("campaign") from None
    async with _runtime(request).sessions() as session:
        campaign = await repo.get_campaign(session, request.state.user_id, campaign_id)
    if campaign is None:   # deleted right after the edit
        raise not_found("campaign")
    return JSONResponse({"message": message, "campaign": views.campaign_dict(campaign)})


async def api_task_now(request: Request) -> Response:
    task_id = int(request.path_params["task_id"])
    retry = request.url.path.endswith("/retry-now")
    try:
        message = await call_task_now(_runtime(request), request.state.user_id, task_id, retry=retry)
    except EditRefused as exc:
        raise _refused(exc) from None
    except LookupError:
        raise not_found("task") from None
    return JSONResponse({"message": message, "task_id": task_id})


async def page_edit_campaign(request: Request) -> Response:
    campaign_id = int(request.path_params["campaign_id"])
    form = await form_data(request)
    data = {key: await _text_field(form, key) for key in EDITABLE if key in form}
    if not data.get("max_attempts", "").strip():
        data.pop("max_attempts", None)   # left empty on the form: the attempts stay as they are
    try:
        message = await edit_campaign(_runtime(request), request.state.user_id, campaign_id, parse_edit(data))
    except EditRefused as exc:
        _flash(request, exc.message[0].upper() + exc.message[1:], "error")
    except LookupError:
        raise not_found("campaign") from None
    else:
        _flash(request, message[0].upper() + message[1:] + ".")
    return _redirect(f"/campaigns/{campaign_id}")


async def page_task_now(request: Request) -> Response:
    task_id = int(request.path_params["task_id"])
    retry = request.url.path.endswith("/retry-now")
    async with _runtime(request).sessions() as session:
        task = await repo.get_task(session, request.state.user_id, task_id)
    if task is None:
        raise not_found("task")
    try:
        message = await call_task_now(_runtime(request), request.state.user_id, task_id, retry=retry)
    except EditRefused as exc:
        _flash(request, exc.message[0].upper() + exc.message[1:], "error")
    else:
        _flash(request, message[0].upper() + message[1:] + ".")
    return _redirect(f"/campaigns/{task.campaign_id}")


def routes() -> list:
    """Listed before the pages' and the API's `/{action}` routes, which would take these paths."""
    return [
        page("/campaigns/{campaign_id:int}/edit", page_edit_campaign, ["POST"]),
        page("/tasks/{task_id:int}/call-now", page_task_now, ["POST"]),
        page("/tasks/{task_id:int}/retry-now", page_task_now, ["POST"]),
        api("/api/campaigns/{campaign_id:int}", api_edit_campaign, ["PATCH"]),
        api("/api/tasks/{task_id:int}/call-now", api_task_now, ["POST"]),
        api("/api/tasks/{task_id:int}/retry-now", api_task_now, ["POST"]),
    ]
