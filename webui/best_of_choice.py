"""The user's choice of the best offer in a best-of campaign (opendeep/best_of.py): a form on the campaign page
(`POST /campaigns/{id}/choose`, CSRF-checked like every page form) and the JSON API (`GET|POST
/api/campaigns/{id}/choice`). Scoped by the signed-in user: another tenant's campaign is 404. A choice that is
not one of the campaign's offers is refused (400) and changes nothing; a second choice is 409.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from db import repo
from opendeep import best_of
from opendeep.runtime import Runtime
from webui.pages import _flash, _redirect, _render, _runtime, _text_field
from webui.routing import HttpError, api, form_data, json_body, not_found, page

REFUSED_STATUS = {"not_an_offer": 400, "invalid_choice": 400}   # the rest: 409 (not now)


async def make_choice(runtime: Runtime, user_id: int, campaign_id: int, task_id: int,
                      reason: str = "") -> dict[str, Any]:
    """The user's choice, in one transaction with its follow-up task; LookupError if the campaign is not theirs,
    best_of.ChoiceError if it cannot be made."""
    async with runtime.sessions() as session, session.begin():
        campaign = await repo.get_campaign(session, user_id, campaign_id)
        if campaign is None:
            raise LookupError(f"campaign {campaign_id} not found")
        choice = await best_of.choose(session, campaign, task_id, by="user",
                                      reason=reason.strip()[:500] or "your choice")
    best_of.publish_choice(runtime.events, user_id, campaign_id, choice)
    return choice


def _task_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise best_of.ChoiceError("invalid_choice", "task_id must be the id of one of the campaign's offers")
    try:
        return int(value)
    except ValueError:
        raise best_of.ChoiceError("invalid_choice", "task_id must be the id of one of the campaign's offers") \
            from None


def _http(exc: best_of.ChoiceError) -> HttpError:
    return HttpError(REFUSED_STATUS.get(exc.code, 409), exc.code, exc.message)


async def api_choice_state(request: Request) -> Response:
    """The offers and the choice (or the phase before it) of one of the user's best-of campaigns."""
    async with _runtime(request).sessions() as session:
        campaign = await repo.get_campaign(session, request.state.user_id, int(request.path_params["campaign_id"]))
        if campaign is None:
            raise not_found("campaign")
        state = await best_of.state(session, campaign)
    if state is None:
        raise HttpError(409, "not_best_of", "this campaign's goal is not 'best of several': there is nothing to choose")
    return JSONResponse(state)


async def page_best_of_fragment(request: Request) -> Response:
    """The campaign page's offers-and-choice section, rendered again on live events (app.js)."""
    campaign_id = int(request.path_params["campaign_id"])
    async with _runtime(request).sessions() as session:
        campaign = await repo.get_campaign(session, request.state.user_id, campaign_id)
        if campaign is None:
            raise not_found("campaign")
        state = await best_of.state(session, campaign)
    if state is None:
        raise not_found("best-of choice")
    return _render(request, "_best_of.html", {"best_of": state, "campaign": {"id": campaign_id}})


async def api_choose(request: Request) -> Response:
    """POST {"task_id": n, "reason": "..."}: the user picks the best offer."""
    body = await json_body(request)
    campaign_id = int(request.path_params["campaign_id"])
    reason = body.get("reason", "")
    try:
        choice = await make_choice(_runtime(request), request.state.user_id, campaign_id, _task_id(body.get("task_id")),
                                   reason if isinstance(reason, str) else "")
    except LookupError:
        raise not_found("campaign") from None
    except best_of.ChoiceError as exc:
        raise _http(exc) from None
    return JSONResponse(choice)


async def page_choose(request: Request) -> Response:
    """The campaign page's form: one radio button per offer."""
    campaign_id = int(request.path_params["campaign_id"])
    form = await form_data(request)
    try:
        choice = await make_choice(_runtime(request), request.state.user_id, campaign_id,
                                   _task_id(await _text_field(form, "task_id")), await _text_field(form, "reason"))
    except LookupError:
        raise not_found("campaign") from None
    except best_of.ChoiceError as exc:
        _flash(request, exc.message[0].upper() + exc.message[1:] + ".", "error")
    else:
        then = " A call to accept the offer is scheduled." if choice["followup_task_id"] else ""
        _flash(request, f"You chose {choice['target']}.{then}")
    return _redirect(f"/campaigns/{campaign_id}")


def routes() -> list:
    """Listed before the pages' and the API's `/{action}` routes, which would take these paths."""
    return [
        page("/campaigns/{campaign_id:int}/choose", page_choose, ["POST"]),
        page("/campaigns/{campaign_id:int}/best-of", page_best_of_fragment, ["GET"]),
        api("/api/campaigns/{campaign_id:int}/choice", api_choice_state, ["GET"]),
        api("/api/campaigns/{campaign_id:int}/choice", api_choose, ["POST"]),
    ]
