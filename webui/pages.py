"""The HTML pages: server-rendered with Jinja2, forms that work without JavaScript, light JS for live updates.

Every route is built with `webui.routing.page`, which requires a session (except login / sign-up) and checks
the CSRF token on every POST. Every lookup is by (user_id, id), so another user's id is a plain 404.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from db import repo
from opendeep.best_of import from_plan as best_of_plan
from opendeep.campaign_goal import describe_goal, parse_goal
from opendeep.llm import LlmNotConfigured
from opendeep.phone import InvalidPhoneNumber, normalize_e164
from opendeep.prices import parse_budget
from opendeep.recordings import recording_path
from opendeep.runtime import Runtime
from opendeep.voicemail import voicemail_script
from webui import views
from webui.account import remember_browser_zone, request_region
from webui.auth import (
    AccountDisabled,
    PasswordChangeError,
    SignupError,
    TooManyLogins,
    change_password,
    checked_login,
    client_address,
    end_every_session,
    sign_up,
    start_session,
)
from webui.controls import ControlAction, ControlError, NotFound, control_campaign, control_task
from webui.csv_import import (
    MAX_ERRORS_REPORTED,
    CsvImportError,
    campaign_from_csv,
    export_dnd_csv,
    import_dnd,
    parse_dnd_csv,
    parse_targets_csv,
    table_csv,
    targets_from_csv,
)
from webui.live import RETRY_AFTER_SECONDS, FeedbackError, TooManyStreams, answer_feedback, live_hub
from webui.orchestrator import PlanRejected, chat_source_key, confirm_plan
from webui.plan import plan_fingerprint, voicemail_message_for
from webui.routing import HttpError, form_data, not_found, page

MAX_CSV_BYTES = 5 * 1024 * 1024
# Flashes travel in the session cookie, and browsers drop a cookie over 4 KB: the first few messages, each
# shortened, at most FLASH_BUDGET bytes of JSON together (base64 makes that about 2 KB of cookie).
MAX_FLASHES = 5
MAX_FLASH_CHARS = 300
FLASH_BUDGET = 1500


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def _render(request: Request, template: str, context: dict[str, Any] | None = None,
            status_code: int = 200) -> Response:
    return request.app.state.templates.TemplateResponse(request, template, context or {}, status_code=status_code)


def _flash(request: Request, message: str, kind: str = "info") -> None:
    """A message for the next page; beyond MAX_FLASHES or FLASH_BUDGET it is left out (the first ones say most)."""
    flashes = request.session.get("flash", [])
    if len(flashes) >= MAX_FLASHES:
        return
    message = message if len(message) <= MAX_FLASH_CHARS else message[:MAX_FLASH_CHARS - 1] + "…"
    room = FLASH_BUDGET - len(json.dumps(flashes))
    while message and len(json.dumps({"kind": kind, "message": message})) + 2 > room:
        message = message[:len(message) // 2]   # non-ASCII text grows up to 12 bytes a character in the cookie
    if message:
        request.session["flash"] = [*flashes, {"kind": kind, "message": message}]


def _redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def _safe_next(target: str | None) -> str:
    """Only same-site paths: a login link must not send the user to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or urlparse(target).netloc:
        return "/campaigns"
    return target


def _client_ip(request: Request) -> str:
    return client_address(request, _runtime(request).settings.trusted_proxies)


def _int(request: Request, name: str) -> int:
    return int(request.path_params[name])


async def _text_field(form, name: str, default: str = "") -> str:
    value = form.get(name, default)
    return value if isinstance(value, str) else default


async def _upload_text(form, name: str) -> str:
    upload = form.get(name)
    if isinstance(upload, UploadFile):
        data = await upload.read(MAX_CSV_BYTES + 1)
    elif isinstance(upload, str):
        data = upload.encode()
    else:
        data = b""
    if len(data) > MAX_CSV_BYTES:
        raise CsvImportError(1, f"the file is larger than {MAX_CSV_BYTES // 1024 // 1024} MiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CsvImportError(1, "the file is not UTF-8 text (save it as 'CSV UTF-8')") from None


# ---------------------------------------------------------------- accounts


async def home(request: Request) -> Response:
    return _redirect("/campaigns" if request.state.user_id else "/login")


async def login(request: Request) -> Response:
    next_path = _safe_next(request.query_params.get("next"))
    if request.method == "GET":
        return _render(request, "login.html", {"next": next_path,
                                               "logged_out": request.query_params.get("logged_out") == "1"})
    form = await form_data(request)
    username = await _text_field(form, "username")
    password = await _text_field(form, "password")
    next_path = _safe_next(await _text_field(form, "next"))
    # `login_name`, not `username`: the page's globals already name the logged-in user `username`.
    try:
        user = await checked_login(request.app.state.rate_limiter, _runtime(request).sessions, _client_ip(request),
                                   username, password)
    except TooManyLogins as exc:
        return _render(request, "login.html", {"next": next_path, "login_name": username,
                                               "error": f"Too many failed logins. Try again in {exc.seconds} s."},
                       status_code=429)
    except AccountDisabled as exc:
        return _render(request, "login.html", {"next": next_path, "login_name": username,
                                               "error": str(exc)[0].upper() + str(exc)[1:] + "."}, status_code=403)
    if user is None:
        return _render(request, "login.html", {"next": next_path, "login_name": username,
                                               "error": "Wrong username or password."}, status_code=401)
    user = await remember_browser_zone(_runtime(request).sessions, user, await _text_field(form, "tz"))
    start_session(request, user)
    return _redirect(next_path)


async def logout(request: Request) -> Response:
    await end_every_session(_runtime(request).sessions, request)
    return _redirect("/login?logged_out=1")


async def account_password(request: Request) -> Response:
    """Change the password (GET: the form). Every other session of the user ends; this one starts afresh."""
    if request.method == "GET":
        return _render(request, "account_password.html")
    form = await form_data(request)
    new_password = await _text_field(form, "new_password")
    if new_password != await _text_field(form, "new_password_again"):
        return _render(request, "account_password.html", {"error": "The two new passwords differ."}, 400)
    try:
        user = await change_password(_runtime(request).sessions, request.app.state.rate_limiter, _client_ip(request),
                                     request.state.user_id, await _text_field(form, "current_password"),
                                     new_password)
    except TooManyLogins as exc:
        return _render(request, "account_password.html",
                       {"error": f"Too many wrong passwords. Try again in {exc.seconds} s."}, 429)
    except PasswordChangeError as exc:
        return _render(request, "account_password.html", {"error": str(exc)[0].upper() + str(exc)[1:] + "."}, 400)
    start_session(request, user)
    _flash(request, "Password changed. Every other session of your account is logged out.")
    return _redirect("/campaigns")


async def signup(request: Request) -> Response:
    if not _runtime(request).settings.allow_signup:
        raise not_found("page")
    if request.method == "GET":
        return _render(request, "signup.html")
    form = await form_data(request)
    username = await _text_field(form, "username")
    try:
        user = await sign_up(_runtime(request).sessions, username, await _text_field(form, "password"))
    except SignupError as exc:
        return _render(request, "signup.html", {"error": str(exc), "login_name": username}, status_code=400)
    start_session(request, user)
    return _redirect("/chat")


# ---------------------------------------------------------------- chat


async def chat_list(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        chats = await repo.list_chat_sessions(session, request.state.user_id)
    return _render(request, "chat_list.html", {"chats": chats})


async def chat_new(request: Request) -> Response:
    if not _runtime(request).settings.llm_configured:   # a chat nobody answers helps no one: say why, offer CSV
        _flash(request, "The assistant is off: no LLM is configured (set OPENAI_API_KEY or OPENAI_BASE_URL and "
                        "restart). Import your targets from a CSV file instead.", "error")
        return _redirect("/campaigns/import")
    async with _runtime(request).sessions() as session:
        chat = await repo.create_chat_session(session, request.state.user_id)
        await session.commit()
    return _redirect(f"/chat/{chat.id}")


async def chat_page(request: Request) -> Response:
    chat_id = _int(request, "chat_id")
    async with _runtime(request).sessions() as session:
        chat = await views.chat_view(session, request.state.user_id, chat_id)
        source_key = chat_source_key(chat_id, plan_fingerprint(chat["plan"])) if chat and chat["plan"] else ""
        # This very plan is scheduled already: the page shows it, and no confirm button to click again.
        scheduled = await repo.get_campaign_by_source_key(session, request.state.user_id, source_key) \
            if source_key else None
    if chat is None:
        raise not_found("chat")
    plan = chat["plan"] or {}
    callback_number = _runtime(request).settings.callback_number_e164
    voicemail = [(target["name"], voicemail_script(message, callback_number))
                 for target in plan.get("targets", []) if (message := voicemail_message_for(plan, target))]
    goal_in_words = describe_goal(plan.get("goal_type", "each_target"), plan.get("parallel_calls", 1),
                                  best_of_plan(plan)) if plan else ""
    return _render(request, "chat.html", {"chat": chat, "source_key": source_key, "voicemail": voicemail,
                                          "goal_in_words": goal_in_words,
                                          "scheduled_id": scheduled.id if scheduled else None})


async def chat_message(request: Request) -> Response:
    chat_id = _int(request, "chat_id")
    form = await form_data(request)
    text = (await _text_field(form, "text")).strip()
    questions = [value for key, value in form.multi_items() if key == "question" and isinstance(value, str)]
    answers = [value for key, value in form.multi_items() if key == "answer" and isinstance(value, str)]
    if questions:   # the follow-up questions form: one message with each question and its answer
        text = "\n".join(f"{q} — {a.strip() or '(no answer)'}" for q, a in zip(questions, answers, strict=False))
    if not text:
        _flash(request, "Write a message first.", "error")
        return _redirect(f"/chat/{chat_id}")
    try:
        turn = await request.app.state.assistant.respond(_runtime(request).sessions, request.state.user_id,
                                                         chat_id, text)
    except LookupError:
        raise not_found("chat") from None
    except LlmNotConfigured as exc:
        _flash(request, f"The assistant is off: {exc}. You can still import targets from a CSV file.", "error")
        return _redirect(f"/chat/{chat_id}")
    if turn.error:
        _flash(request, f"The assistant could not answer: {turn.error}", "error")
    return _redirect(f"/chat/{chat_id}#end")


async def chat_confirm(request: Request) -> Response:
    chat_id = _int(request, "chat_id")
    form = await form_data(request)
    runtime = _runtime(request)
    async with runtime.sessions() as session:
        chat = await repo.get_chat_session(session, request.state.user_id, chat_id)
    if chat is None:
        raise not_found("chat")
    if not chat.plan:
        _flash(request, "There is no plan to confirm yet.", "error")
        return _redirect(f"/chat/{chat_id}")
    expected = chat_source_key(chat_id, plan_fingerprint(chat.plan))
    if await _text_field(form, "source_key") != expected:
        # The plan changed since this page was shown: confirm what the user sees, not something newer.
        _flash(request, "The plan changed since you opened this page; check it and confirm again.", "error")
        return _redirect(f"/chat/{chat_id}")
    try:
        confirmation = await confirm_plan(runtime.sessions, request.state.user_id, chat.plan, expected,
                                          chat_id=chat_id, events=runtime.events,
                                          default_region=await request_region(request))
    except PlanRejected as exc:
        _flash(request, f"The plan is not valid: {exc}", "error")
        return _redirect(f"/chat/{chat_id}")
    if confirmation.created:
        _flash(request, f"Campaign scheduled with {len(confirmation.task_ids)} call task(s).")
    return _redirect(f"/campaigns/{confirmation.campaign.id}")


# ---------------------------------------------------------------- campaigns and tasks


async def campaign_list(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        campaigns = await views.list_campaigns(session, request.state.user_id)
    return _render(request, "campaigns.html", {"campaigns": campaigns})


async def _detail(request: Request) -> dict[str, Any]:
    runtime = _runtime(request)
    async with runtime.sessions() as session:
        detail = await views.campaign_detail(session, request.state.user_id, _int(request, "campaign_id"),
                                             page=views.page_number(request.query_params.get("page")))
        if detail is not None:   # what a waiting task waits for (webui.status.waiting_for)
            dnd_numbers = await repo.dnd_numbers_in_campaign(session, request.state.user_id,
                                                             detail["campaign"]["id"])
    if detail is None:
        raise not_found("campaign")
    return {**detail, "asterisk": views.asterisk_state(runtime.ami), "dnd_numbers": dnd_numbers}


async def campaign_page(request: Request) -> Response:
    return _render(request, "campaign.html", await _detail(request))


async def campaign_tasks_fragment(request: Request) -> Response:
    return _render(request, "_tasks.html", await _detail(request))


async def campaign_header_fragment(request: Request) -> Response:
    """The campaign's title, status and buttons: the page refreshes them on live events (one small query, not
    the whole campaign: it runs on every task's change)."""
    runtime = _runtime(request)
    async with runtime.sessions() as session:
        campaign = await repo.get_campaign(session, request.state.user_id, _int(request, "campaign_id"))
    if campaign is None:
        raise not_found("campaign")
    return _render(request, "_campaign_header.html", {"campaign": views.campaign_dict(campaign),
                                                      "asterisk": views.asterisk_state(runtime.ami)})


async def _control(request: Request, run) -> None:
    try:
        action = ControlAction(request.path_params["action"])
    except ValueError:
        raise not_found("action") from None
    try:
        result = await run(action)
    except NotFound as exc:
        raise HttpError(404, "not_found", str(exc)) from None
    except ControlError as exc:
        _flash(request, exc.message, "error")
    else:
        _flash(request, result.message[0].upper() + result.message[1:] + ".")
    return None


async def campaign_control(request: Request) -> Response:
    campaign_id = _int(request, "campaign_id")
    await _control(request, lambda action: control_campaign(_runtime(request), request.state.user_id,
                                                            campaign_id, action))
    return _redirect(f"/campaigns/{campaign_id}")


async def task_control(request: Request) -> Response:
    task_id = _int(request, "task_id")
    async with _runtime(request).sessions() as session:
        task = await repo.get_task(session, request.state.user_id, task_id)
        page = await views.task_page_number(session, request.state.user_id, task.campaign_id, task_id) if task else 1
    if task is None:
        raise not_found("task")
    await _control(request, lambda action: control_task(_runtime(request), request.state.user_id, task_id, action))
    return _redirect(f"/campaigns/{task.campaign_id}" + (f"?page={page}" if page > 1 else "") + f"#task-{task_id}")


async def call_page(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        call = await views.call_detail(session, request.state.user_id, _int(request, "call_id"))
        task = await repo.get_task(session, request.state.user_id, call["task_id"]) if call else None
    if call is None or task is None:
        raise not_found("call")
    recording = recording_path(_runtime(request).settings, request.state.user_id, call["id"])
    return _render(request, "call.html", {"call": call, "task": views.task_dict(task),
                                          "has_recording": recording.is_file()})


async def call_recording(request: Request) -> Response:
    """The call's recording (WAV), for the call's owner only."""
    runtime = _runtime(request)
    call_id = _int(request, "call_id")
    async with runtime.sessions() as session:
        call = await repo.get_call(session, request.state.user_id, call_id)
    path = recording_path(runtime.settings, request.state.user_id, call_id) if call is not None else None
    if path is None or not path.is_file():
        raise not_found("recording")
    return FileResponse(path, media_type="audio/wav", filename=f"call-{call_id}.wav")


async def campaign_import(request: Request) -> Response:
    """New campaign from a CSV of targets (GET: the form; POST: import all rows or none)."""
    if request.method == "GET":
        return _render(request, "import.html")
    form = await form_data(request)
    name = (await _text_field(form, "name")).strip()
    goal = (await _text_field(form, "goal")).strip()
    budget_usd = (await _text_field(form, "budget_usd")).strip()
    try:
        goal_type = parse_goal(await _text_field(form, "goal_type"))
    except ValueError as exc:
        return _render(request, "import.html", {"error": str(exc), "name": name, "goal": goal,
                                                "budget_usd": budget_usd}, 400)
    if not name:
        return _render(request, "import.html", {"error": "Give the campaign a name.", "goal": goal,
                                                "goal_type": goal_type.value}, 400)
    try:
        budget = parse_budget(budget_usd)
    except ValueError as exc:
        return _render(request, "import.html", {"error": f"Budget: {exc}.", "name": name, "goal": goal,
                                                "budget_usd": budget_usd, "goal_type": goal_type.value}, 400)
    try:
        rows = parse_targets_csv(await _upload_text(form, "file"), await request_region(request))
    except CsvImportError as exc:
        return _render(request, "import.html", {"error": "Nothing was imported.", "name": name, "goal": goal,
                                                "errors": exc.errors[:MAX_ERRORS_REPORTED],
                                                "budget_usd": budget_usd, "goal_type": goal_type.value}, 400)
    runtime = _runtime(request)
    async with runtime.sessions() as session:
        campaign, task_ids = await campaign_from_csv(session, runtime.events, request.state.user_id, rows, name=name,
                                                     goal=goal, goal_type=goal_type, budget_microusd=budget)
    _flash(request, f"Imported {len(task_ids)} target(s).")
    return _redirect(f"/campaigns/{campaign.id}")


async def campaign_add_targets(request: Request) -> Response:
    campaign_id = _int(request, "campaign_id")
    form = await form_data(request)
    runtime = _runtime(request)
    async with runtime.sessions() as session:
        campaign = await repo.get_campaign(session, request.state.user_id, campaign_id)
        if campaign is None:
            raise not_found("campaign")
        if refusal := views.targets_refusal(campaign):
            _flash(request, f"Nothing was imported: {refusal}.", "error")
            return _redirect(f"/campaigns/{campaign_id}")
        try:
            rows = parse_targets_csv(await _upload_text(form, "file"), await request_region(request))
        except CsvImportError as exc:
            _flash(request, f"Nothing was imported: {exc}", "error")
            return _redirect(f"/campaigns/{campaign_id}")
        task_ids = await targets_from_csv(session, runtime.events, request.state.user_id, campaign, rows)
    _flash(request, f"Imported {len(task_ids)} target(s).")
    return _redirect(f"/campaigns/{campaign_id}")


async def _summary(request: Request):
    async with _runtime(request).sessions() as session:
        campaign = await repo.get_campaign(session, request.state.user_id, _int(request, "campaign_id"))
        counts = await views.task_counts(session, request.state.user_id, campaign.id) if campaign else {}
    if campaign is None:
        raise not_found("campaign")
    return campaign, counts


def _has_summary(campaign) -> bool:
    return campaign.summary is not None or bool(campaign.summary_text)


async def summary_page(request: Request) -> Response:
    """The summary for a person; before it exists, a page saying why and when it will (404, with a way back)."""
    campaign, counts = await _summary(request)
    if not _has_summary(campaign):
        return _render(request, "summary_pending.html", {"campaign": views.campaign_dict(campaign, counts)}, 404)
    columns, rows = views.summary_table(campaign.summary)
    summary = campaign.summary if isinstance(campaign.summary, dict) else {}
    return _render(request, "summary.html", {"campaign": views.campaign_dict(campaign),
                                             "summary_text": campaign.summary_text, "columns": columns,
                                             "rows": rows, "people": views.summary_people(campaign.summary),
                                             "goal_report": (summary.get("goal") or {}).get("report"),
                                             "calls_line": summary.get("calls")})


async def summary_csv(request: Request) -> Response:
    campaign, _ = await _summary(request)
    if not _has_summary(campaign):
        raise HttpError(404, "no_summary", "this campaign has no summary yet (it is written when the campaign ends)")
    people = views.summary_people(campaign.summary)
    if people is not None:
        columns = list(views.PEOPLE_COLUMNS)
        rows = [[person[column] for column in columns] for person in people]
    else:
        columns, rows = views.summary_table(campaign.summary)
    return PlainTextResponse(table_csv(columns, rows), media_type="text/csv; charset=utf-8", headers={
        "content-disposition": f'attachment; filename="campaign-{campaign.id}-summary.csv"'})


# ---------------------------------------------------------------- do-not-call list


async def dnd_page(request: Request) -> Response:
    """The list, with a count and a search (part of a number or of the reason)."""
    query = request.query_params.get("q", "").strip()[:100]
    async with _runtime(request).sessions() as session:
        entries = await repo.list_dnd(session, request.state.user_id)
    total = len(entries)
    if query:
        digits = "".join(ch for ch in query if ch.isdigit())
        needle = query.lower()
        entries = [e for e in entries if (digits and digits in e.phone_number)
                   or needle in (e.reason or "").lower() or needle in e.phone_number]
    return _render(request, "dnd.html", {"entries": entries, "total": total, "query": query})


async def dnd_add(request: Request) -> Response:
    form = await form_data(request)
    try:
        number = normalize_e164(await _text_field(form, "phone_number"), await request_region(request))
    except InvalidPhoneNumber as exc:
        _flash(request, str(exc), "error")
        return _redirect("/dnd")
    async with _runtime(request).sessions() as session:
        added = await repo.add_dnd(session, request.state.user_id, number, (await _text_field(form, "reason"))[:500])
        await session.commit()
    _flash(request, f"{number} added to your do-not-call list." if added else f"{number} was already on it.")
    return _redirect("/dnd")


async def dnd_remove(request: Request) -> Response:
    form = await form_data(request)
    number = await _text_field(form, "phone_number")
    async with _runtime(request).sessions() as session:
        removed = await repo.remove_dnd(session, request.state.user_id, number)
        await session.commit()
    if not removed:
        raise not_found("number on your do-not-call list")
    _flash(request, f"{number} removed from your do-not-call list.")
    return _redirect("/dnd")


async def dnd_import_page(request: Request) -> Response:
    form = await form_data(request)
    try:
        rows = parse_dnd_csv(await _upload_text(form, "file"), await request_region(request))
    except CsvImportError as exc:
        _flash(request, f"Nothing was imported: {exc}", "error")
        for error in exc.errors[1:10]:
            _flash(request, str(error), "error")
        return _redirect("/dnd")
    async with _runtime(request).sessions() as session:
        added = await import_dnd(session, request.state.user_id, rows)
        await session.commit()
    _flash(request, f"Imported {len(rows)} number(s), {added} new.")
    return _redirect("/dnd")


async def dnd_export(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        text = await export_dnd_csv(session, request.state.user_id)
    return PlainTextResponse(text, media_type="text/csv; charset=utf-8",
                             headers={"content-disposition": 'attachment; filename="dnd.csv"'})


# ---------------------------------------------------------------- human in the loop and live events


async def feedback_page(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        pending = await repo.list_pending_feedback(session, request.state.user_id)
        cards = [await views.feedback_card(session, request.state.user_id, item) for item in pending]
        closed = [await views.feedback_card(session, request.state.user_id, item)
                  for item in await repo.list_closed_feedback(session, request.state.user_id)]
    return _render(request, "feedback.html", {"cards": cards, "closed": closed})


async def feedback_answer(request: Request) -> Response:
    form = await form_data(request)
    try:
        await answer_feedback(_runtime(request), request.state.user_id, _int(request, "request_id"),
                              await _text_field(form, "answer"))
    except FeedbackError as exc:
        if exc.code == "not_found":
            raise not_found("question") from None
        _flash(request, exc.message, "error")
    else:
        _flash(request, "Answer sent to the call.")
    return _redirect(_safe_next(await _text_field(form, "next", "/feedback")))


async def events(request: Request) -> Response:
    try:
        stream = live_hub(request.app.state).open(request.state.user_id)
    except TooManyStreams as exc:
        raise HttpError(429, "too_many_streams", str(exc), headers={"retry-after": str(RETRY_AFTER_SECONDS)}) from None
    return StreamingResponse(stream.events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


def routes() -> list[Route]:
    return [
        page("/", home, auth=False),
        page("/login", login, ["GET", "POST"], auth=False),
        page("/logout", logout, ["POST"]),
        page("/signup", signup, ["GET", "POST"], auth=False),
        page("/account/password", account_password, ["GET", "POST"]),
        page("/chat", chat_list),
        page("/chat", chat_new, ["POST"]),
        page("/chat/{chat_id:int}", chat_page),
        page("/chat/{chat_id:int}/messages", chat_message, ["POST"]),
        page("/chat/{chat_id:int}/confirm", chat_confirm, ["POST"]),
        page("/campaigns", campaign_list),
        page("/campaigns/import", campaign_import, ["GET", "POST"]),
        page("/campaigns/{campaign_id:int}", campaign_page),
        page("/campaigns/{campaign_id:int}/tasks", campaign_tasks_fragment),
        page("/campaigns/{campaign_id:int}/header", campaign_header_fragment),
        page("/campaigns/{campaign_id:int}/targets", campaign_add_targets, ["POST"]),
        page("/campaigns/{campaign_id:int}/summary", summary_page),
        page("/campaigns/{campaign_id:int}/summary.csv", summary_csv),
        page("/campaigns/{campaign_id:int}/{action:str}", campaign_control, ["POST"]),
        page("/tasks/{task_id:int}/{action:str}", task_control, ["POST"]),
        page("/calls/{call_id:int}", call_page),
        page("/calls/{call_id:int}/recording.wav", call_recording),
        page("/dnd", dnd_page),
        page("/dnd", dnd_add, ["POST"]),
        page("/dnd/remove", dnd_remove, ["POST"]),
        page("/dnd/import", dnd_import_page, ["POST"]),
        page("/dnd.csv", dnd_export),
        page("/feedback", feedback_page),
        page("/feedback/{request_id:int}/answer", feedback_answer, ["POST"]),
        page("/events", events),
    ]
