"""How every route is guarded, and how errors look: one place, so no page or API call can forget a check.

`page()` / `api()` build Starlette routes whose endpoint first checks the session against the database (pages
redirect to /login, the API answers 401), then that every id in the path can be a row (404 otherwise) and, for
every method other than GET/HEAD, the CSRF token (403). Errors raised as
`HttpError` become `{"error": {"code": ..., "message": ...}}` under /api and an error page elsewhere.
`BodyLimit` refuses request bodies over a size (413) before a handler reads them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webui.auth import CSRF_FIELD, CSRF_HEADER, csrf_matches, current_user_id

Endpoint = Callable[[Request], Awaitable[Response]]
SAFE_METHODS = frozenset({"GET", "HEAD"})
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# Ids are INTEGER columns, 32-bit on PostgreSQL: a larger number names no row, and would overflow the driver.
MAX_ID = 2**31 - 1


class HttpError(Exception):
    """An error for the client: HTTP status, a stable machine code and a sentence for a person."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 details: list | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details   # e.g. every bad CSV line, every plan error


def not_found(what: str) -> HttpError:
    # The same answer for "does not exist" and "belongs to someone else": nothing leaks between tenants.
    return HttpError(404, "not_found", f"{what} not found")


def error_json(status: int, code: str, message: str, headers: dict[str, str] | None = None,
               details: list | None = None) -> JSONResponse:
    error: dict = {"code": code, "message": message}
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/api"


async def form_data(request: Request) -> FormData:
    """The request's form (cached by Starlette, so the CSRF check and the handler read it once)."""
    if not request.headers.get("content-type", "").startswith(FORM_TYPES):
        raise HttpError(415, "unsupported_media_type", "expected a form submission")
    return await request.form(max_files=4, max_fields=2000)


async def json_body(request: Request) -> dict:
    """The request's JSON object, or 400/415 saying what is wrong with it."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise HttpError(415, "unsupported_media_type", "send Content-Type: application/json")
    try:
        body = json.loads(await request.body() or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, "invalid_json", f"the body is not valid JSON ({exc})") from None
    except RecursionError:
        raise HttpError(400, "invalid_json", "the body nests arrays or objects too deeply") from None
    if not isinstance(body, dict):
        raise HttpError(400, "invalid_json", "the body must be a JSON object")
    return body


async def _check_csrf(request: Request) -> None:
    submitted = request.headers.get(CSRF_HEADER)
    if submitted is None and request.headers.get("content-type", "").startswith(FORM_TYPES):
        field = (await form_data(request)).get(CSRF_FIELD)
        submitted = field if isinstance(field, str) else None
    if not csrf_matches(request, submitted):
        raise HttpError(403, "csrf_failed", "missing or wrong CSRF token: reload the page and try again "
                                            "(API clients: send the X-CSRF-Token header from GET /api/session)")


def _guard(endpoint: Endpoint, *, auth: bool, api: bool) -> Endpoint:
    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        user_id = await current_user_id(request, request.app.state.runtime.sessions)
        if auth and user_id is None:
            if api:
                raise HttpError(401, "not_authenticated", "log in first (POST /api/login)")
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        for name, value in request.path_params.items():
            if isinstance(value, int) and value > MAX_ID:
                raise not_found(name.removesuffix("_id").replace("_", " "))
        if request.method not in SAFE_METHODS:
            await _check_csrf(request)
        request.state.user_id = user_id
        before_page = getattr(request.app.state, "before_page", None)
        if not api and user_id is not None and request.method in SAFE_METHODS and before_page is not None:
            await before_page(request)   # what every page shows (the status strip)
        return await endpoint(request)

    return guarded


def page(path: str, endpoint: Endpoint, methods: Sequence[str] = ("GET",), *, auth: bool = True) -> Route:
    """An HTML route: login required unless auth=False; CSRF checked on non-GET methods."""
    return Route(path, _guard(endpoint, auth=auth, api=False), methods=list(methods))


def api(path: str, endpoint: Endpoint, methods: Sequence[str] = ("GET",), *, auth: bool = True) -> Route:
    """A JSON API route: 401 without a session; CSRF checked on non-GET methods."""
    return Route(path, _guard(endpoint, auth=auth, api=True), methods=list(methods))


class BodyLimit:
    """Refuse request bodies above `default_limit` bytes (or a larger limit for listed path prefixes): 413.

    Checks Content-Length first, and counts the bytes of bodies sent without it (chunked).
    """

    def __init__(self, app: ASGIApp, default_limit: int, limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits = limits or {}

    def _limit(self, path: str) -> int:
        for prefix, limit in self.limits.items():
            if path.startswith(prefix):
                return limit
        return self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope["path"])
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._refuse(scope, receive, send, limit)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send, limit)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        message = f"the request body is larger than {limit // 1024} KiB"
        if scope["path"].startswith("/api"):
            response: Response = error_json(413, "payload_too_large", message)
        else:
            response = Response(message, status_code=413, media_type="text/plain")
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


class SecurityHeaders:
    """Headers every answer carries: no framing, no MIME sniffing, scripts and styles only from /static."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                headers += [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"same-origin"), (b"content-security-policy", CSP.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
