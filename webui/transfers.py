"""Transfer targets, the people the call AI may hand a callee to: a page (/transfer-targets) and the JSON API
(/api/transfer-targets). The call AI only ever sees their names; the numbers stay here."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from db import transfers
from opendeep.phone import InvalidPhoneNumber, normalize_e164
from webui.pages import _flash, _redirect, _render, _runtime, _text_field
from webui.routing import HttpError, api, form_data, json_body, not_found, page

_NAME = re.compile(r"[^\x00-\x1f]{1,100}")   # shown to the model and in the page: one line, no control characters


def _validated(name: str, phone_number: str) -> tuple[str, str]:
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise HttpError(400, "invalid_field", "give the target a name of 1-100 characters on one line")
    try:
        return name, normalize_e164(phone_number)
    except InvalidPhoneNumber as exc:
        raise HttpError(400, "invalid_phone_number", str(exc)) from None


def _as_dict(target) -> dict:
    return {"id": target.id, "name": target.name, "phone_number": target.phone_number,
            "created_at": target.created_at.isoformat()}


async def _add(request: Request, name: str, phone_number: str):
    name, number = _validated(name, phone_number)
    async with _runtime(request).sessions() as session:
        target = await transfers.add_transfer_target(session, request.state.user_id, name, number)
        await session.commit()
    if target is None:
        raise HttpError(409, "conflict", f"you already have a transfer target named {name!r} (or the most "
                                         f"allowed: {transfers.MAX_TARGETS_PER_USER})")
    return target


def _target_id(request: Request) -> int:
    try:
        return int(request.path_params["target_id"])
    except ValueError:
        raise not_found("transfer target") from None


async def _remove(request: Request, target_id: int) -> None:
    async with _runtime(request).sessions() as session:
        removed = await transfers.remove_transfer_target(session, request.state.user_id, target_id)
        await session.commit()
    if not removed:
        raise not_found("transfer target")


# ---------------------------------------------------------------- pages

async def targets_page(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        targets = await transfers.list_transfer_targets(session, request.state.user_id)
    return _render(request, "transfer_targets.html", {"targets": targets})


async def target_add_page(request: Request) -> Response:
    form = await form_data(request)
    try:
        target = await _add(request, await _text_field(form, "name"), await _text_field(form, "phone_number"))
    except HttpError as exc:
        _flash(request, exc.message, "error")
    else:
        _flash(request, f"{target.name} ({target.phone_number}) can now take transferred calls.")
    return _redirect("/transfer-targets")


async def target_remove_page(request: Request) -> Response:
    await _remove(request, _target_id(request))
    _flash(request, "Transfer target removed.")
    return _redirect("/transfer-targets")


# ---------------------------------------------------------------- JSON API

async def targets_list(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        targets = await transfers.list_transfer_targets(session, request.state.user_id)
    return JSONResponse({"targets": [_as_dict(t) for t in targets]})


async def target_create(request: Request) -> Response:
    body = await json_body(request)
    name, number = body.get("name"), body.get("phone_number")
    if not isinstance(name, str) or not isinstance(number, str):
        raise HttpError(400, "invalid_field", "send {\"name\": \"...\", \"phone_number\": \"+E.164\"}")
    return JSONResponse(_as_dict(await _add(request, name, number)), status_code=201)


async def target_delete(request: Request) -> Response:
    await _remove(request, _target_id(request))
    return Response(status_code=204)


def routes() -> list:
    return [
        page("/transfer-targets", targets_page),
        page("/transfer-targets", target_add_page, ["POST"]),
        page("/transfer-targets/{target_id}/remove", target_remove_page, ["POST"]),
        api("/api/transfer-targets", targets_list),
        api("/api/transfer-targets", target_create, ["POST"]),
        api("/api/transfer-targets/{target_id}", target_delete, ["DELETE"]),
    ]
