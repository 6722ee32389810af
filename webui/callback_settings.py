"""How a user's callbacks are taken (fastagi_server/callbacks.py): whether the call AI answers a callee who rings
back, and who gets the callbacks it does not take -- one of the user's transfer targets, or nobody (a polite
message, then hangup). A page (/callbacks) and the JSON API (GET / POST /api/callback-settings)."""

from __future__ import annotations

from sqlalchemy import update
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from db import repo, transfers
from db.models import User
from webui.pages import _flash, _redirect, _render, _runtime, _text_field
from webui.routing import HttpError, api, form_data, json_body, not_found, page


async def _current(request: Request) -> dict:
    async with _runtime(request).sessions() as session:
        user = await repo.get_user(session, request.state.user_id)
        targets = await transfers.list_transfer_targets(session, request.state.user_id)
    if user is None:
        raise not_found("account")
    fallback = next((t for t in targets if t.id == user.callback_fallback_target_id), None)
    return {"ai_answers": bool(user.callback_ai),
            "fallback_target_id": fallback.id if fallback else None,
            "fallback_target_name": fallback.name if fallback else None,
            "window_days": _runtime(request).settings.callback_window_days,
            "callback_number": _runtime(request).settings.callback_number_e164 or None,
            "targets": [{"id": t.id, "name": t.name} for t in targets]}


async def _save(request: Request, ai_answers: bool, target_id: int | None) -> None:
    """Store the choice; a target id must be one of this user's transfer targets."""
    user_id = request.state.user_id
    async with _runtime(request).sessions() as session:
        if target_id is not None:
            mine = {t.id for t in await transfers.list_transfer_targets(session, user_id)}
            if target_id not in mine:
                raise HttpError(400, "invalid_field", "fallback_target_id must be one of your transfer targets "
                                                      "(GET /api/transfer-targets), or null for the message")
        await session.execute(update(User).where(User.id == user_id)
                              .values(callback_ai=ai_answers, callback_fallback_target_id=target_id))
        await session.commit()


async def settings_page(request: Request) -> Response:
    return _render(request, "callbacks.html", {"callbacks": await _current(request)})


async def settings_save_page(request: Request) -> Response:
    form = await form_data(request)
    raw_target = await _text_field(form, "fallback_target_id")
    try:
        target_id = int(raw_target) if raw_target else None
        await _save(request, await _text_field(form, "ai_answers") == "on", target_id)
    except ValueError:
        _flash(request, "Choose a fallback from the list.", "error")
    except HttpError as exc:
        _flash(request, exc.message, "error")
    else:
        _flash(request, "Callback settings saved.")
    return _redirect("/callbacks")


async def settings_get(request: Request) -> Response:
    return JSONResponse(await _current(request))


async def settings_put(request: Request) -> Response:
    body = await json_body(request)
    ai_answers, target_id = body.get("ai_answers"), body.get("fallback_target_id")
    if not isinstance(ai_answers, bool) or not (target_id is None or type(target_id) is int):
        raise HttpError(400, "invalid_field",
                        "send {\"ai_answers\": true|false, \"fallback_target_id\": <transfer target id>|null}")
    await _save(request, ai_answers, target_id)
    return JSONResponse(await _current(request))


def routes() -> list:
    return [
        page("/callbacks", settings_page),
        page("/callbacks", settings_save_page, ["POST"]),
        api("/api/callback-settings", settings_get),
        api("/api/callback-settings", settings_put, ["POST"]),
    ]
