"""The live board (/board): the user's calls in progress — who, how long, the last words said — with hang up,
and listen-in (/board/calls/{id}): the call's transcript as it is spoken, for the call's owner only.

The page is rendered from the database; the browser then follows the user's live event stream (app.js
re-dispatches each event as `live:<kind>` for board.js): a `call.transcript` event adds the line at once, a
`call.updated` / `task.updated` event reloads the board's rows. Calls handled by another process (`serve --only`)
publish to that process's hub, so board.js also reloads the rows every few seconds while the page is open.
Hang up is the task's cancel control (webui.controls): the task is cancelled first, then the channel is hung up,
so the call's end never schedules a retry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from db import call_log, repo
from db.models import CallStatus
from db.types import utcnow
from webui import views
from webui.controls import ControlAction, ControlError, NotFound, control_task
from webui.pages import _flash, _redirect, _render, _runtime
from webui.routing import api, not_found, page

LAST_LINES = 3


def _seconds(since: datetime | None, now: datetime) -> int | None:
    return max(int((now - since).total_seconds()), 0) if since is not None else None


async def board_calls(sessions, user_id: int, now: datetime) -> list[dict[str, Any]]:
    """The user's calls in progress as the board shows them: who, which campaign, the state, how long (talking
    since the answer, else ringing since the dial) and the last LAST_LINES lines said."""
    async with sessions() as session:
        rows = await call_log.calls_in_progress(session, user_id)
        lines = await call_log.last_lines(session, user_id, [row.id for row in rows], LAST_LINES)
    calls = []
    for row in rows:
        answered = row.status is CallStatus.ANSWERED and row.answered_at is not None
        since = row.answered_at if answered else (row.started_at or row.created_at)
        seconds = _seconds(since, now)
        calls.append({
            "id": row.id, "task_id": row.task_id, "target_name": row.target_name, "number": row.dialed_number,
            "campaign_id": row.campaign_id, "campaign_name": row.campaign_name, "status": row.status.value,
            "attempt": row.attempt_number, "answered": answered, "since": since.isoformat(),
            "seconds": seconds, "duration": format_duration(seconds),
            "last_words": [views.transcript_dict(line) for line in lines[row.id]],
        })
    return calls


def format_duration(seconds: int | None) -> str:
    """`75` -> "1:15" (minutes:seconds), as a call timer reads."""
    if seconds is None:
        return "—"
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


async def board_page(request: Request) -> Response:
    """GET /board: the user's calls in progress."""
    calls = await board_calls(_runtime(request).sessions, request.state.user_id, utcnow())
    return _render(request, "board.html", {"calls": calls})


async def board_rows(request: Request) -> Response:
    """The board's rows alone (board.js swaps them in on live events)."""
    calls = await board_calls(_runtime(request).sessions, request.state.user_id, utcnow())
    return _render(request, "_board_rows.html", {"calls": calls})


async def board_hangup(request: Request) -> Response:
    """Hang up one of the user's calls in progress: its task is cancelled and its channel hung up."""
    call_id = int(request.path_params["call_id"])
    runtime = _runtime(request)
    async with runtime.sessions() as session:
        call = await repo.get_call(session, request.state.user_id, call_id)
    if call is None:
        raise not_found("call")
    if call.status is CallStatus.ENDED:
        _flash(request, f"Call {call_id} had already ended.")
        return _redirect("/board")
    try:
        result = await control_task(runtime, request.state.user_id, call.task_id, ControlAction.CANCEL)
    except NotFound:
        raise not_found("call") from None
    except ControlError as exc:
        _flash(request, f"Call {call_id} was not hung up: {exc.message}.", "error")
    else:
        _flash(request, f"Call {call_id}: {result.message}.")
    return _redirect("/board")


async def listen_page(request: Request) -> Response:
    """Listen in: the call's transcript so far, then each line as it is said (the owner's calls only)."""
    call_id = int(request.path_params["call_id"])
    async with _runtime(request).sessions() as session:
        call = await views.call_detail(session, request.state.user_id, call_id)
        task = await repo.get_task(session, request.state.user_id, call["task_id"]) if call else None
    if call is None or task is None:
        raise not_found("call")
    return _render(request, "listen.html", {"call": call, "task": views.task_dict(task)})


async def board_api(request: Request) -> Response:
    """GET /api/board: the calls in progress as the board shows them (hang up: POST /api/tasks/{task_id}/cancel)."""
    return JSONResponse({"calls": await board_calls(_runtime(request).sessions, request.state.user_id, utcnow())})


def routes() -> list[Route]:
    """The live board's pages and API route, for `create_app`."""
    return [
        api("/api/board", board_api),
        page("/board", board_page),
        page("/board/rows", board_rows),
        page("/board/calls/{call_id:int}", listen_page),
        page("/board/calls/{call_id:int}/hangup", board_hangup, ["POST"]),
    ]
