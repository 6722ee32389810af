"""Webhook endpoints and their deliveries: pages (/webhooks, /webhooks/deliveries) and the JSON API
(/api/webhooks, /api/webhooks/deliveries). A URL is checked (form, DNS, no private address unless
WEBHOOK_ALLOW_PRIVATE) before it is saved; the sender checks it again before every request."""

from __future__ import annotations

import re
import secrets

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from db import webhooks
from opendeep.webhooks import UnsafeWebhookUrl, checked_addresses
from webui.pages import _flash, _redirect, _render, _runtime, _text_field
from webui.routing import HttpError, api, form_data, json_body, not_found, page

_SECRET = re.compile(r"[\x21-\x7e]{16,200}")   # printable ASCII, no spaces: it is typed into other systems


def _new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _validated_events(events: object) -> list[str]:
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise HttpError(400, "invalid_field", f"choose one or more events of: {', '.join(webhooks.EVENT_TYPES)}")
    unknown = [e for e in events if e not in webhooks.EVENT_TYPES]
    if unknown:
        raise HttpError(400, "invalid_field", f"unknown event(s) {', '.join(unknown)[:200]}; choose from "
                                              f"{', '.join(webhooks.EVENT_TYPES)}")
    return [e for e in webhooks.EVENT_TYPES if e in events]


async def _add(request: Request, url: str, secret: str, events: object):
    url = url.strip()
    chosen = _validated_events(events)
    secret = secret.strip() or _new_secret()
    if not _SECRET.fullmatch(secret):
        raise HttpError(400, "invalid_field", "the secret must be 16-200 printable characters without spaces "
                                              "(or leave it empty to get one)")
    try:
        await checked_addresses(url, _runtime(request).settings.webhook_allow_private)
    except UnsafeWebhookUrl as exc:
        raise HttpError(400, "invalid_url", str(exc)) from None
    async with _runtime(request).sessions() as session:
        endpoint = await webhooks.add_endpoint(session, request.state.user_id, url, secret, chosen)
        await session.commit()
    if endpoint is None:
        raise HttpError(409, "conflict", f"you have the most webhook endpoints allowed "
                                         f"({webhooks.MAX_ENDPOINTS_PER_USER}); remove one first")
    return endpoint


def _endpoint_id(request: Request) -> int:
    return int(request.path_params["endpoint_id"])


def _endpoint_dict(endpoint, *, with_secret: bool = False) -> dict:
    shown = {"id": endpoint.id, "url": endpoint.url, "events": endpoint.events, "enabled": endpoint.enabled,
             "created_at": endpoint.created_at.isoformat()}
    return {**shown, "secret": endpoint.secret} if with_secret else shown


def _delivery_dict(delivery) -> dict:
    return {"id": delivery.id, "endpoint_id": delivery.endpoint_id, "event_id": delivery.event_id,
            "event_type": delivery.event_type, "status": delivery.status.value, "attempts": delivery.attempts,
            "last_status_code": delivery.last_status_code, "last_error": delivery.last_error,
            "created_at": delivery.created_at.isoformat(),
            "next_attempt_at": delivery.next_attempt_at.isoformat() if delivery.status.value == "pending" else None,
            "delivered_at": delivery.delivered_at.isoformat() if delivery.delivered_at else None,
            "history": delivery.history}


async def _set_enabled(request: Request, enabled: bool) -> None:
    async with _runtime(request).sessions() as session:
        changed = await webhooks.set_endpoint_enabled(session, request.state.user_id, _endpoint_id(request), enabled)
        await session.commit()
    if not changed:
        raise not_found("webhook endpoint")


async def _remove(request: Request) -> None:
    async with _runtime(request).sessions() as session:
        removed = await webhooks.remove_endpoint(session, request.state.user_id, _endpoint_id(request))
        await session.commit()
    if not removed:
        raise not_found("webhook endpoint")


# ---------------------------------------------------------------- pages

async def endpoints_page(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        endpoints = await webhooks.list_endpoints(session, request.state.user_id)
    return _render(request, "webhooks.html", {"endpoints": endpoints, "event_types": webhooks.EVENT_TYPES})


async def endpoint_add_page(request: Request) -> Response:
    form = await form_data(request)
    try:
        endpoint = await _add(request, await _text_field(form, "url"), await _text_field(form, "secret"),
                              [e for e in form.getlist("events") if isinstance(e, str)])
    except HttpError as exc:
        _flash(request, exc.message, "error")
    else:
        _flash(request, f"Webhook endpoint {endpoint.url} added; its secret is shown in the list.")
    return _redirect("/webhooks")


async def endpoint_enable_page(request: Request) -> Response:
    await _set_enabled(request, True)
    return _redirect("/webhooks")


async def endpoint_disable_page(request: Request) -> Response:
    await _set_enabled(request, False)
    return _redirect("/webhooks")


async def endpoint_remove_page(request: Request) -> Response:
    await _remove(request)
    _flash(request, "Webhook endpoint removed, with its deliveries.")
    return _redirect("/webhooks")


async def deliveries_page(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        deliveries = await webhooks.list_deliveries(session, request.state.user_id)
        endpoints = {e.id: e.url for e in await webhooks.list_endpoints(session, request.state.user_id)}
    return _render(request, "webhook_deliveries.html", {"deliveries": deliveries, "endpoints": endpoints})


# ---------------------------------------------------------------- JSON API

async def endpoints_list(request: Request) -> Response:
    async with _runtime(request).sessions() as session:
        endpoints = await webhooks.list_endpoints(session, request.state.user_id)
    return JSONResponse({"endpoints": [_endpoint_dict(e, with_secret=True) for e in endpoints],
                         "event_types": list(webhooks.EVENT_TYPES)})


async def endpoint_create(request: Request) -> Response:
    body = await json_body(request)
    url, secret = body.get("url"), body.get("secret", "")
    if not isinstance(url, str) or not isinstance(secret, str):
        raise HttpError(400, "invalid_field", 'send {"url": "https://...", "events": ["call.ended", ...], '
                                              '"secret": "(optional)"}')
    endpoint = await _add(request, url, secret, body.get("events"))
    return JSONResponse(_endpoint_dict(endpoint, with_secret=True), status_code=201)


async def endpoint_update(request: Request) -> Response:
    enabled = (await json_body(request)).get("enabled")
    if not isinstance(enabled, bool):
        raise HttpError(400, "invalid_field", 'send {"enabled": true} or {"enabled": false}')
    await _set_enabled(request, enabled)
    return Response(status_code=204)


async def endpoint_delete(request: Request) -> Response:
    await _remove(request)
    return Response(status_code=204)


async def deliveries_list(request: Request) -> Response:
    raw = request.query_params.get("endpoint_id")
    if raw is not None and (not raw.isdigit() or int(raw) > 2**31 - 1):
        raise HttpError(400, "invalid_field", "endpoint_id must be an endpoint's id")
    async with _runtime(request).sessions() as session:
        deliveries = await webhooks.list_deliveries(session, request.state.user_id,
                                                    endpoint_id=int(raw) if raw is not None else None)
    return JSONResponse({"deliveries": [_delivery_dict(d) for d in deliveries]})


def routes() -> list:
    return [
        page("/webhooks", endpoints_page),
        page("/webhooks", endpoint_add_page, ["POST"]),
        page("/webhooks/deliveries", deliveries_page),
        page("/webhooks/{endpoint_id:int}/enable", endpoint_enable_page, ["POST"]),
        page("/webhooks/{endpoint_id:int}/disable", endpoint_disable_page, ["POST"]),
        page("/webhooks/{endpoint_id:int}/remove", endpoint_remove_page, ["POST"]),
        api("/api/webhooks", endpoints_list),
        api("/api/webhooks", endpoint_create, ["POST"]),
        api("/api/webhooks/deliveries", deliveries_list),
        api("/api/webhooks/{endpoint_id:int}", endpoint_update, ["PATCH"]),
        api("/api/webhooks/{endpoint_id:int}", endpoint_delete, ["DELETE"]),
    ]
