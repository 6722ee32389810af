"""The JSON API: everything the pages do, for scripts and other front ends.

Sessions are the same signed cookie as the pages: `GET /api/session` returns a CSRF token, `POST /api/login`
logs in, and every POST/DELETE sends the token in `X-CSRF-Token`. Errors are always
`{"error": {"code": "...", "message": "..."}}` with a fitting status (400 bad input, 401 not logged in, 403 CSRF,
404 not found or not yours, 409 wrong state, 413 too large, 415 wrong content type, 422 invalid plan or CSV,
429 too many logins, 503 no LLM configured).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from db import repo
from opendeep.campaign_goal import parse_goal
from opendeep.health import health_report
from opendeep.llm import LlmNotConfigured
from opendeep.phone import InvalidPhoneNumber, normalize_e164
from opendeep.prices import parse_budget
from opendeep.runtime import Runtime
from webui import views
from webui.account import request_region
from webui.auth import (
    AccountDisabled,
    PasswordChangeError,
    SignupError,
    TooManyLogins,
    change_password,
    checked_login,
    client_address,
    csrf_token,
    end_every_session,
    sign_up,
    start_session,
)
from webui.controls import ControlAction, ControlError, NotFound, control_campaign, control_task
from webui.csv_import import (
    CsvImportError,
    campaign_from_csv,
    export_dnd_csv,
    import_dnd,
    parse_dnd_csv,
    parse_targets_csv,
    table_csv,
    targets_from_csv,
)
from webui.live import FeedbackError, answer_feedback
from webui.orchestrator import MAX_SOURCE_KEY, PlanRejected, chat_source_key, confirm_plan
from webui.plan import plan_fingerprint, validate_plan
from webui.routing import MAX_ID, HttpError, api, json_body, not_found


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def _int(request: Request, name: str) -> int:
    return int(request.path_params[name])


def _str(body: dict[str, Any], key: str, *, required: bool = True, limit: int = 8000) -> str:
    value = body.get(key, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise HttpError(400, "invalid_field", f"'{key}' must be a non-empty string")
    if len(value) > limit:
        raise HttpError(400, "invalid_field", f"'{key}' is longer than {limit} characters")
    return value


async def _csv_text(request: Request) -> str:
    if not request.headers.get("content-type", "").startswith(("text/csv", "text/plain")):
        raise HttpError(415, "unsupported_media_type", "send the CSV as the body with Content-Type: text/csv")
    try:
        return (await request.body()).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise HttpError(400, "invalid_encoding", "the CSV is not UTF-8 text") from None


def _csv_error(exc: CsvImportError) -> HttpError:
    return HttpError(422, "invalid_csv", f"nothing was imported: {exc}",
                     details=[{"line": e.line, "reason": e.reason} for e in exc.errors])


# ---------------------------------------------------------------- session


async def session_info(request: Request) -> Response:
    runtime = _runtime(request)
    user = None
    if request.state.user_id is not None:
        user = {"id": request.state.user_id, "username": request.session.get("username")}
    return JSONResponse({"user": user, "csrf_token": csrf_token(request),
                         "signup_allowed": runtime.settings.allow_signup,
                         "llm_configured": runtime.settings.llm_configured})


def _client_address(request: Request) -> str:
    return client_address(request, _runtime(request).settings.trusted_proxies)


def _too_many(exc: TooManyLogins) -> HttpError:
    return HttpError(429, "too_many_logins", str(exc), headers={"retry-after": str(exc.seconds)})


async def login(request: Request) -> Response:
    body = await json_body(request)
    username, password = _str(body, "username", limit=64), _str(body, "password", limit=1024)
    try:
        user = await checked_login(request.app.state.rate_limiter, _runtime(request).sessions,
                                   _client_address(request), username, password)
    except TooManyLogins as exc:
        raise _too_many(exc) from None
    except AccountDisabled as exc:
        raise HttpError(403, "account_disabled", str(exc)) from None
    if user is None:
        raise HttpError(401, "wrong_credentials", "wrong username or password")
    start_session(request, user)
    return JSONResponse({"user": {"id": user.id, "username": user.username}, "csrf_token": csrf_token(request)})


async def logout(request: Request) -> Response:
    """Ends every session of the user, not only this one."""
    await end_every_session(_runtime(request).sessions, request)
    return JSONResponse({"logged_out": True})


async def account_password(request: Request) -> Response:
    """{"current_password": ..., "new_password": ...}: every session of the user ends; the answer carries the
    new session's CSRF token (its cookie is set on this response)."""
    body = await json_body(request)
    try:
        user = await change_password(_runtime(request).sessions, request.app.state.rate_limiter,
                                     _client_address(request), request.state.user_id,
                                     _str(body, "current_password", limit=1024), _str(body, "new_password", limit=1024))
    except TooManyLogins as exc:
        raise _too_many(exc) from None
    except PasswordChangeError as exc:
        raise HttpError(403 if exc.code == "wrong_password" else 400, exc.code, str(exc)) from None
    start_session(request, user)
    return JSONResponse({"password_changed": True, "csrf_token": csrf_token(request)})


async def signup(request: Request) -> Response:
    if not _runtime(request).settings.allow_signup:
        raise not_found("sign-up")
    body = await json_body(request)
    try:
        user = await sign_up(_runtime(request).sessions, _str(body, "username", limit=64),
                             _str(body, "password", limit=1024))
    except SignupError as exc:
        raise HttpError(400, "signup_refused", str(exc)) from None
    start_session(request, user)
    return JSONResponse({"user": {"id": user.id, "username": user.username}, "csrf_token": csrf_token(request)},
                        status_code=201)


# ---------------------------------------------------------------- chat


async def chat_list(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        chats = await repo.list_chat_sessions(session, request.state.user_id)
    return JSONResponse({"chats": [{"id": c.id, "title": c.title, "campaign_id": c.campaign_id,
                                    "has_plan": c.plan is not None, "created_at": c.created_at.isoformat()}
                                   for c in chats]})


async def chat_create(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        chat = await repo.create_chat_session(session, request.state.user_id)
        await session.commit()
    return JSONResponse({"id": chat.id, "title": chat.title}, status_code=201)


async def _chat(request: Request, chat_id: int) -> dict[str, Any]:
    async with _runtime(request).sessions() as session:
        chat = await views.chat_view(session, request.state.user_id, chat_id)
    if chat is None:
        raise not_found("chat")
    chat["source_key"] = chat_source_key(chat_id, plan_fingerprint(chat["plan"])) if chat["plan"] else None
    return chat


async def chat_get(request: Request) -> Response:
    return JSONResponse(await _chat(request, _int(request, "chat_id")))


async def chat_message(request: Request) -> Response:
    chat_id = _int(request, "chat_id")
    body = await json_body(request)
    text = _str(body, "text")
    try:
        turn = await request.app.state.assistant.respond(_runtime(request).sessions, request.state.user_id,
                                                         chat_id, text)
    except LookupError:
        raise not_found("chat") from None
    except LlmNotConfigured as exc:
        raise HttpError(503, "llm_not_configured", str(exc)) from None
    if turn.error:
        raise HttpError(502, "llm_unavailable", turn.error)
    return JSONResponse({"reply": turn.reply, "questions": turn.questions, "plan": turn.plan,
                         "plan_errors": turn.plan_errors, "chat": await _chat(request, chat_id)})


async def chat_confirm(request: Request) -> Response:
    chat_id = _int(request, "chat_id")
    body = await json_body(request)
    chat = await _chat(request, chat_id)
    if not chat["plan"]:
        raise HttpError(409, "no_plan", "this chat has no plan to confirm yet")
    if body.get("source_key") not in (None, chat["source_key"]):
        raise HttpError(409, "plan_changed", "the plan changed since you read it; GET the chat and confirm again")
    return await _confirm(request, chat["plan"], chat["source_key"], chat_id)


async def _confirm(request: Request, plan: Any, source_key: str, chat_id: int | None) -> Response:
    runtime = _runtime(request)
    try:
        confirmation = await confirm_plan(runtime.sessions, request.state.user_id, plan, source_key,
                                          chat_id=chat_id, events=runtime.events,
                                          default_region=await request_region(request))
    except PlanRejected as exc:
        raise HttpError(422, "invalid_plan", f"the plan is not valid: {exc}", details=exc.errors) from None
    return JSONResponse({"campaign_id": confirmation.campaign.id, "created": confirmation.created,
                         "task_ids": confirmation.task_ids}, status_code=201 if confirmation.created else 200)


# ---------------------------------------------------------------- plans and campaigns


async def plan_validate(request: Request) -> Response:
    check = validate_plan((await json_body(request)).get("plan"), await request_region(request))
    return JSONResponse({"valid": check.ok, "plan": check.plan, "errors": check.errors})


async def campaign_list(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        return JSONResponse({"campaigns": await views.list_campaigns(session, request.state.user_id)})


async def campaign_create(request: Request) -> Response:
    """Confirm a plan directly: {"plan": {...}, "source_key": "..."} (the key makes retries harmless)."""
    body = await json_body(request)
    source_key = _str(body, "source_key", limit=MAX_SOURCE_KEY)
    return await _confirm(request, body.get("plan"), f"api-{source_key}"[:MAX_SOURCE_KEY], None)


async def campaign_get(request: Request) -> Response:
    runtime = _runtime(request)
    async with runtime.sessions() as session:
        detail = await views.campaign_detail(session, request.state.user_id, _int(request, "campaign_id"),
                                             page=views.page_number(request.query_params.get("page")))
    if detail is None:
        raise not_found("campaign")
    return JSONResponse({**detail, "asterisk": views.asterisk_state(runtime.ami)})


async def _run_control(run, action_name: str) -> Response:
    try:
        action = ControlAction(action_name)
    except ValueError:
        raise not_found("action") from None
    try:
        result = await run(action)
    except NotFound as exc:
        raise HttpError(404, "not_found", str(exc)) from None
    except ControlError as exc:
        raise HttpError(409, exc.code, exc.message) from None
    return JSONResponse({"message": result.message, "changed_task_ids": result.changed_task_ids,
                         "hangup_errors": result.hangup_errors})


async def campaign_control(request: Request) -> Response:
    campaign_id = _int(request, "campaign_id")
    return await _run_control(lambda action: control_campaign(_runtime(request), request.state.user_id,
                                                              campaign_id, action), request.path_params["action"])


async def campaign_import(request: Request) -> Response:
    """New campaign from a CSV body: POST /api/campaigns/import?name=...&goal=...&goal_type=... (text/csv).
    goal_type: each_target (default) or until_one_succeeds (the rows' order is the calling order)."""
    name = request.query_params.get("name", "").strip()
    goal = request.query_params.get("goal", "").strip()
    if not name:
        raise HttpError(400, "invalid_field", "give the campaign a name: ?name=...")
    try:
        budget = parse_budget(request.query_params.get("budget_usd"))
    except ValueError as exc:
        raise HttpError(400, "invalid_budget", f"budget_usd: {exc}") from None
    try:
        goal_type = parse_goal(request.query_params.get("goal_type"))
    except ValueError as exc:
        raise HttpError(400, "invalid_field", str(exc)) from None
    try:
        rows = parse_targets_csv(await _csv_text(request), await request_region(request))
    except CsvImportError as exc:
        raise _csv_error(exc) from None
    runtime = _runtime(request)
    async with runtime.sessions() as session:
        campaign, task_ids = await campaign_from_csv(session, runtime.events, request.state.user_id, rows, name=name,
                                                     goal=goal, goal_type=goal_type, budget_microusd=budget)
    return JSONResponse({"campaign_id": campaign.id, "task_ids": task_ids}, status_code=201)


async def campaign_add_targets(request: Request) -> Response:
    campaign_id = _int(request, "campaign_id")
    runtime = _runtime(request)
    async with runtime.sessions() as session:
        campaign = await repo.get_campaign(session, request.state.user_id, campaign_id)
        if campaign is None:
            raise not_found("campaign")
        if refusal := views.targets_refusal(campaign):
            raise HttpError(409, "campaign_finished", refusal)
        try:
            rows = parse_targets_csv(await _csv_text(request), await request_region(request))
        except CsvImportError as exc:
            raise _csv_error(exc) from None
        task_ids = await targets_from_csv(session, runtime.events, request.state.user_id, campaign, rows)
    return JSONResponse({"campaign_id": campaign_id, "task_ids": task_ids}, status_code=201)


async def campaign_summary(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        campaign = await repo.get_campaign(session, request.state.user_id, _int(request, "campaign_id"))
    if campaign is None:
        raise not_found("campaign")
    columns, rows = views.summary_table(campaign.summary)
    if request.query_params.get("format") == "csv":
        return PlainTextResponse(table_csv(columns, rows), media_type="text/csv; charset=utf-8")
    return JSONResponse({"campaign_id": campaign.id, "summary_text": campaign.summary_text,
                         "summary": campaign.summary, "columns": columns, "rows": rows,
                         "summarized_at": campaign.summarized_at.isoformat() if campaign.summarized_at else None})


async def task_get(request: Request) -> Response:
    user_id = request.state.user_id
    async with _runtime(request).sessions() as session:
        task = await repo.get_task(session, user_id, _int(request, "task_id"))
        if task is None:
            raise not_found("task")
        calls = [views.call_dict(c) for c in await repo.list_calls(session, user_id, task.id)]
        decisions = [{"type": e.type, "reason": e.reason, "at": e.at.isoformat()}
                     for e in await repo.list_task_events(session, user_id, task.id)]
    return JSONResponse({**views.task_dict(task), "calls": calls, "events": decisions})


async def task_control(request: Request) -> Response:
    task_id = _int(request, "task_id")
    return await _run_control(lambda action: control_task(_runtime(request), request.state.user_id, task_id,
                                                          action), request.path_params["action"])


async def call_get(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        call = await views.call_detail(session, request.state.user_id, _int(request, "call_id"))
    if call is None:
        raise not_found("call")
    return JSONResponse(call)


# ---------------------------------------------------------------- do-not-call list


async def dnd_list(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        entries = await repo.list_dnd(session, request.state.user_id)
    return JSONResponse({"entries": [{"phone_number": e.phone_number, "reason": e.reason,
                                      "created_at": e.created_at.isoformat()} for e in entries]})


async def dnd_add(request: Request) -> Response:
    body = await json_body(request)
    try:
        number = normalize_e164(_str(body, "phone_number", limit=40), await request_region(request))
    except InvalidPhoneNumber as exc:
        raise HttpError(400, "invalid_phone_number", str(exc)) from None
    reason = _str(body, "reason", required=False, limit=500)
    async with _runtime(request).sessions() as session:
        added = await repo.add_dnd(session, request.state.user_id, number, reason)
        await session.commit()
    return JSONResponse({"phone_number": number, "added": added}, status_code=201 if added else 200)


async def dnd_delete(request: Request) -> Response:
    number = request.path_params["phone_number"]
    async with _runtime(request).sessions() as session:
        removed = await repo.remove_dnd(session, request.state.user_id, number)
        await session.commit()
    if not removed:
        raise not_found("number on your do-not-call list")
    return JSONResponse({"phone_number": number, "removed": True})


async def dnd_import(request: Request) -> Response:
    try:
        rows = parse_dnd_csv(await _csv_text(request), await request_region(request))
    except CsvImportError as exc:
        raise _csv_error(exc) from None
    async with _runtime(request).sessions() as session:
        added = await import_dnd(session, request.state.user_id, rows)
        await session.commit()
    return JSONResponse({"imported": len(rows), "added": added})


async def dnd_export(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        return PlainTextResponse(await export_dnd_csv(session, request.state.user_id),
                                 media_type="text/csv; charset=utf-8")


# ---------------------------------------------------------------- human in the loop, notifications


async def feedback_list(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        pending = await repo.list_pending_feedback(session, request.state.user_id)
        cards = [await views.feedback_card(session, request.state.user_id, item) for item in pending]
    return JSONResponse({"pending": cards})


async def feedback_answer(request: Request) -> Response:
    body = await json_body(request)
    try:
        answered = await answer_feedback(_runtime(request), request.state.user_id, _int(request, "request_id"),
                                         _str(body, "answer", limit=100_000))
    except FeedbackError as exc:
        status = {"not_found": 404, "not_pending": 409}.get(exc.code, 400)
        raise HttpError(status, exc.code, exc.message) from None
    return JSONResponse({"request_id": answered.id, "status": answered.status.value, "answer": answered.answer})


async def notifications(request: Request) -> Response:
    try:
        after = int(request.query_params.get("after", "0"))
    except ValueError:
        raise HttpError(400, "invalid_field", "'after' must be a notification id") from None
    if not 0 <= after <= MAX_ID:
        raise HttpError(400, "invalid_field", f"'after' must be a notification id from 0 to {MAX_ID}")
    async with _runtime(request).sessions() as session:
        notes = await repo.list_notifications(session, request.state.user_id, after_id=after)
    return JSONResponse({"notifications": [{"id": n.id, "kind": n.kind, "message": n.message,
                                            "created_at": n.created_at.isoformat(),
                                            "read": n.read_at is not None} for n in notes]})


async def notification_read(request: Request) -> Response:
    """Mark one of the user's notifications read: `read` in GET /api/notifications says so from then on."""
    notification_id = _int(request, "notification_id")
    async with _runtime(request).sessions() as session:
        if notification_id > MAX_ID or not await repo.mark_notification_read(session, request.state.user_id,
                                                                              notification_id):
            raise HttpError(404, "not_found", f"no notification {notification_id}")
        await session.commit()
    return JSONResponse({"id": notification_id, "read": True})


async def healthz(request: Request) -> Response:
    """For monitoring, no login: 200 when this process and its database work, 503 otherwise (opendeep/health.py)."""
    healthy, report = await health_report(request.app.state.runtime)
    return JSONResponse(report, status_code=200 if healthy else 503, headers={"Cache-Control": "no-store"})


def routes() -> list[Route]:
    return [
        api("/healthz", healthz, auth=False),
        api("/api/session", session_info, auth=False),
        api("/api/login", login, ["POST"], auth=False),
        api("/api/logout", logout, ["POST"]),
        api("/api/signup", signup, ["POST"], auth=False),
        api("/api/account/password", account_password, ["POST"]),
        api("/api/chats", chat_list),
        api("/api/chats", chat_create, ["POST"]),
        api("/api/chats/{chat_id:int}", chat_get),
        api("/api/chats/{chat_id:int}/messages", chat_message, ["POST"]),
        api("/api/chats/{chat_id:int}/confirm", chat_confirm, ["POST"]),
        api("/api/plans/validate", plan_validate, ["POST"]),
        api("/api/campaigns", campaign_list),
        api("/api/campaigns", campaign_create, ["POST"]),
        api("/api/campaigns/import", campaign_import, ["POST"]),
        api("/api/campaigns/{campaign_id:int}", campaign_get),
        api("/api/campaigns/{campaign_id:int}/targets", campaign_add_targets, ["POST"]),
        api("/api/campaigns/{campaign_id:int}/summary", campaign_summary),
        api("/api/campaigns/{campaign_id:int}/{action:str}", campaign_control, ["POST"]),
        api("/api/tasks/{task_id:int}", task_get),
        api("/api/tasks/{task_id:int}/{action:str}", task_control, ["POST"]),
        api("/api/calls/{call_id:int}", call_get),
        api("/api/dnd", dnd_list),
        api("/api/dnd", dnd_add, ["POST"]),
        api("/api/dnd/import", dnd_import, ["POST"]),
        api("/api/dnd/export", dnd_export),
        api("/api/dnd/{phone_number:str}", dnd_delete, ["DELETE"]),
        api("/api/feedback", feedback_list),
        api("/api/feedback/{request_id:int}/answer", feedback_answer, ["POST"]),
        api("/api/notifications", notifications),
        api("/api/notifications/{notification_id:int}/read", notification_read, ["POST"]),
    ]
