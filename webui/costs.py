"""What things cost, and campaign budgets: the usage page (per month), a campaign's budget form, and the JSON API.

The numbers come from db/costs.py (usage records priced when they were recorded). Every lookup is by
(user_id, id): another tenant's campaign, task or call is a plain 404, and a month shows the user's own usage only.

    GET  /usage[?month=YYYY-MM]                  the month's costs by kind, model and campaign (page)
    POST /campaigns/{id}/budget                  form field budget_usd (empty: no budget)
    GET  /api/usage[?month=YYYY-MM]              the same as JSON
    GET  /api/campaigns/{id}/costs | /api/tasks/{id}/costs | /api/calls/{id}/costs
    PUT  /api/campaigns/{id}/budget              {"budget_usd": 25.0} or {"budget_usd": null}
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from db import costs, repo
from db.types import utcnow
from opendeep.prices import format_usd, parse_budget
from webui.pages import _flash, _redirect, _render, _runtime, _text_field
from webui.routing import HttpError, api, form_data, json_body, not_found, page


def _month(request: Request) -> str:
    month = request.query_params.get("month") or f"{utcnow():%Y-%m}"
    try:
        costs.month_bounds(month)
    except ValueError as exc:
        raise HttpError(400, "invalid_field", str(exc)) from None
    return month


async def _set_budget(request: Request, campaign_id: int, raw: Any) -> tuple[dict[str, Any], str]:
    try:
        budget = parse_budget(raw)
    except ValueError as exc:
        raise HttpError(400, "invalid_budget", f"budget_usd: {exc}") from None
    async with _runtime(request).sessions() as session:
        try:
            campaign, stop = await costs.set_budget(session, request.state.user_id, campaign_id, budget)
        except costs.BudgetError as exc:
            if exc.code == "not_found":
                raise not_found("campaign") from None
            raise HttpError(409, exc.code, str(exc)) from None
        await session.commit()
        view = costs.budget_view(campaign)
    if budget is None:
        message = "Budget removed: the campaign has no spending limit."
    elif stop is not None:
        message = (f"Budget set to {format_usd(budget, 2)}; {view['spent']} is already spent, so the campaign is "
                   f"paused. Raise the budget to resume it.")
    elif view["paused_for_budget"]:
        message = f"Budget raised to {format_usd(budget, 2)}; resume the campaign to continue dialing."
    else:
        message = f"Budget set to {format_usd(budget, 2)} ({view['spent']} spent so far)."
    _runtime(request).events.publish(request.state.user_id, "campaign.updated",
                                     {"campaign_id": campaign_id, "action": "budget"})
    return view, message


# ---------------------------------------------------------------- pages


async def usage_page(request: Request) -> Response:
    month = _month(request)
    async with _runtime(request).sessions() as session:
        report = await costs.month_costs(session, request.state.user_id, month)
    return _render(request, "usage.html", {"report": report})


async def budget_form(request: Request) -> Response:
    campaign_id = int(request.path_params["campaign_id"])
    form = await form_data(request)
    try:
        _, message = await _set_budget(request, campaign_id, await _text_field(form, "budget_usd"))
    except HttpError as exc:
        if exc.status == 404:
            raise
        _flash(request, exc.message, "error")
    else:
        _flash(request, message)
    return _redirect(f"/campaigns/{campaign_id}#costs")


# ---------------------------------------------------------------- JSON API


async def usage_json(request: Request) -> Response:
    month = _month(request)
    async with _runtime(request).sessions() as session:
        return JSONResponse(await costs.month_costs(session, request.state.user_id, month))


async def campaign_costs_json(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        report = await costs.campaign_costs(session, request.state.user_id, int(request.path_params["campaign_id"]))
    if report is None:
        raise not_found("campaign")
    return JSONResponse(report)


async def task_costs_json(request: Request) -> Response:
    task_id = int(request.path_params["task_id"])
    async with _runtime(request).sessions() as session:
        if await repo.get_task(session, request.state.user_id, task_id) is None:
            raise not_found("task")
        return JSONResponse({"task_id": task_id, **await costs.task_costs(session, request.state.user_id, task_id)})


async def call_costs_json(request: Request) -> Response:
    call_id = int(request.path_params["call_id"])
    async with _runtime(request).sessions() as session:
        if await repo.get_call(session, request.state.user_id, call_id) is None:
            raise not_found("call")
        return JSONResponse({"call_id": call_id, **await costs.call_costs(session, request.state.user_id, call_id)})


async def budget_json(request: Request) -> Response:
    body = await json_body(request)
    if "budget_usd" not in body:
        raise HttpError(400, "invalid_field", "send {\"budget_usd\": AMOUNT} or {\"budget_usd\": null}")
    view, message = await _set_budget(request, int(request.path_params["campaign_id"]), body["budget_usd"])
    return JSONResponse({**view, "message": message})


def routes() -> list:
    """Listed before the pages' routes: POST /campaigns/{id}/budget must not reach the pause/resume route."""
    return [
        page("/usage", usage_page),
        page("/campaigns/{campaign_id:int}/budget", budget_form, ["POST"]),
        api("/api/usage", usage_json),
        api("/api/campaigns/{campaign_id:int}/costs", campaign_costs_json),
        api("/api/campaigns/{campaign_id:int}/budget", budget_json, ["PUT", "POST"]),
        api("/api/tasks/{task_id:int}/costs", task_costs_json),
        api("/api/calls/{call_id:int}/costs", call_costs_json),
    ]
