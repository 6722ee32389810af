"""The web UI application and its component for `opendeep serve`: all wiring is here, in one place.

`create_app(runtime)` builds the Starlette app (pages, JSON API, live events, static files) around the shared
Runtime; `WebComponent` runs it with uvicorn, in this process, on WEB_BIND, with `GuardedHttpProtocol`'s time
and connection limits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import h11
import uvicorn
from jinja2 import pass_context
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from uvicorn.protocols.http.h11_impl import H11Protocol

from opendeep.runtime import Runtime
from webui import (
    account,
    api,
    best_of_choice,
    board,
    callback_settings,
    calllog,
    campaign_edit,
    chart_pages,
    costs,
    metrics_endpoint,
    pages,
    status,
    transfers,
    webhooks,
)
from webui.assistant import UIAssistantService
from webui.auth import LoginRateLimiter, csrf_token, session_user_id
from webui.routing import BodyLimit, HttpError, SecurityHeaders, error_json, is_api
from webui.status import lights, system_status, waiting_for
from webui.times import UTC_ZONE, format_when, user_zone

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
MAX_BODY = 1024 * 1024            # forms and JSON
MAX_UPLOAD = 5 * 1024 * 1024      # CSV imports
UPLOAD_PATHS = {"/campaigns/import": MAX_UPLOAD, "/dnd/import": MAX_UPLOAD, "/api/dnd/import": MAX_UPLOAD,
                "/api/campaigns/import": MAX_UPLOAD}
SESSION_COOKIE = "opendeep_session"
SESSION_MAX_AGE = 14 * 24 * 3600
ACCEPT_BATCH = 128


def _template_globals(request: Request) -> dict:
    runtime: Runtime = request.app.state.runtime
    zone = user_zone(request.session.get("tz"))
    system = getattr(request.state, "system_status", None)
    return {"csrf_token": csrf_token(request), "username": request.session.get("username"),
            "flashes": request.session.pop("flash", []),
            "logged_in": session_user_id(request) is not None, "settings": runtime.settings,
            "is_admin": bool(request.session.get("admin")), "user_zone": zone, "system": system,
            "status_lights": lights(system, zone) if system is not None else []}


async def _load_system_status(request: Request) -> None:
    runtime: Runtime = request.app.state.runtime
    async with runtime.sessions() as session:
        request.state.system_status = await system_status(session, runtime.settings, runtime.ami,
                                                          request.state.user_id)


@pass_context
def _when(context, value, precision: str = "minutes") -> str:
    return format_when(value, precision, context.get("user_zone") or UTC_ZONE)


@pass_context
def _waiting(context, task: dict) -> str:
    return waiting_for(task, context.get("campaign"), context.get("system"), context["settings"],
                       context.get("user_zone") or UTC_ZONE, context.get("dnd_numbers") or frozenset())


async def _http_error(request: Request, exc: Exception) -> Response:
    details = None
    if isinstance(exc, HttpError):
        status, code, message, headers, details = exc.status, exc.code, exc.message, exc.headers, exc.details
    elif isinstance(exc, HTTPException):
        status, headers = exc.status_code, dict(exc.headers or {})
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        message = {404: "no such page", 405: "method not allowed"}.get(status, str(exc.detail))
    else:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        status, code, message, headers = 500, "internal_error", "something went wrong on our side; it is logged", {}
    if is_api(request):
        return error_json(status, code, message, headers, details)
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(request, "error.html", {"status": status, "code": code, "message": message},
                                      status_code=status, headers=headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client closed the connection while its body was being read (or WEB_BODY_TIMEOUT_SECONDS closed it):
    # nobody is left to answer, and it is no error of ours to log.
    return Response(status_code=400)


def create_app(runtime: Runtime, *, assistant: UIAssistantService | None = None,
               rate_limiter: LoginRateLimiter | None = None) -> Starlette:
    """The web UI for this runtime. SECRET_KEY signs sessions; empty = a random key for this app's lifetime."""
    secret = runtime.settings.secret_key or secrets.token_urlsafe(32)
    app = Starlette(
        # costs and campaign_edit first: POST /campaigns/{id}/{action} would catch /campaigns/{id}/budget|edit.
        routes=[*costs.routes(), *campaign_edit.routes(), *best_of_choice.routes(), *pages.routes(), *api.routes(),
                *transfers.routes(),
                *webhooks.routes(), *metrics_endpoint.routes(), *callback_settings.routes(), *calllog.routes(),
                *board.routes(), *chart_pages.routes(), *account.routes(), *status.routes(),
                Mount("/static", StaticFiles(directory=HERE / "static"), name="static")],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(BodyLimit, default_limit=MAX_BODY, limits=UPLOAD_PATHS),
            Middleware(SessionMiddleware, secret_key=secret, session_cookie=SESSION_COOKIE,
                       max_age=SESSION_MAX_AGE, same_site="lax", https_only=runtime.settings.session_cookie_secure),
        ],
        exception_handlers={HttpError: _http_error, HTTPException: _http_error, ClientDisconnect: _client_gone,
                            Exception: _http_error},
    )
    app.state.runtime = runtime
    app.state.templates = Jinja2Templates(directory=HERE / "templates", context_processors=[_template_globals])
    app.state.templates.env.filters["when"] = _when
    app.state.templates.env.filters["waiting"] = _waiting
    app.state.before_page = _load_system_status
    app.state.assistant = assistant or UIAssistantService(runtime.settings)
    app.state.rate_limiter = rate_limiter or LoginRateLimiter()
    app.state.shutdown = asyncio.Event()     # set on stop: ends the live event streams
    return app


@dataclass(frozen=True)
class ConnectionLimits:
    """WEB_HEADER_TIMEOUT_SECONDS, WEB_BODY_TIMEOUT_SECONDS, WEB_MAX_CONNECTIONS."""

    header_timeout: float
    body_timeout: float
    max_connections: int


class GuardedHttpProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the limits uvicorn lacks.

    Measured on uvicorn 0.54 (tests/security/test_web_connections.py): a connection that sends nothing, a
    header line every few seconds, or a body byte every second is held for ever. Its keep-alive timer runs only
    between requests and every byte received stops it; `limit_concurrency` answers 503 to a request but never
    closes an idle socket, so idle sockets still use up the process's file descriptors, which FastAGI and
    AudioSocket need too.

    Here a client has `header_timeout` seconds from connecting (or from the end of the previous answer) to send
    a whole request head, then `body_timeout` seconds for the whole body; past either, it gets 408 (or nothing,
    if it sent nothing) and the connection closes. Beyond `max_connections` a new connection replaces the one
    that has waited longest without sending a whole request head; if every connection is busy with a request,
    the new one gets 503.
    """

    def __init__(self, *args, limits: ConnectionLimits, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._waiting_for: str | None = None   # "head" or "body": what the deadline is for
        self._waiting_since = 0.0
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._follow_request()
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_request()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._wait_for(None)   # the WebSocket protocol takes the connection over
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._wait_for(None)
        super().connection_lost(exc)

    def _follow_request(self) -> None:
        # h11 knows where the client is: IDLE before a whole request head, SEND_BODY until the body's end.
        state = self.conn.their_state
        self._wait_for("head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None)

    def _wait_for(self, part: str | None) -> None:
        if part == self._waiting_for:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._waiting_for = part
        if part is not None and not self.transport.is_closing():
            self._waiting_since = self.loop.time()
            timeout = self.limits.header_timeout if part == "head" else self.limits.body_timeout
            self._deadline = self.loop.call_later(timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._waiting_for == "head":
            answer = bool(self.conn.trailing_data[0])   # a partial head gets 408; a silent client, nothing
        else:
            answer = self.cycle is not None and not self.cycle.response_started
        self._close(b"408 Request Timeout", b"the request took too long to arrive\n" if answer else None)

    def _make_room(self) -> None:
        open_connections = [c for c in self.connections
                            if not getattr(c, "transport", None) or not c.transport.is_closing()]
        if len(open_connections) <= self.limits.max_connections:
            return   # the rest are already closing
        waiting = [c for c in open_connections
                   if isinstance(c, GuardedHttpProtocol) and c is not self and c._waiting_for == "head"]
        if waiting:
            min(waiting, key=lambda c: c._waiting_since)._close(b"408 Request Timeout", None)
        else:
            log.warning("web UI: %d connections, all busy; refusing a new one (WEB_MAX_CONNECTIONS)",
                        len(open_connections))
            self._close(b"503 Service Unavailable", b"too many connections; try again shortly\n")

    def _close(self, status: bytes, body: bytes | None) -> None:
        """Close the connection; with a body, answer `status` first (outside h11: no response was started)."""
        if body is not None:
            self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
                                 + body)
        self.transport.close()


class WebComponent:
    """Runs the web UI with uvicorn in this process (on WEB_BIND, or on a socket given by a test)."""

    name = "web"

    def __init__(self, runtime: Runtime, sock: socket.socket | None = None) -> None:
        self.runtime = runtime
        self.app = create_app(runtime)
        self._sock = sock
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None
        self.port: int | None = None

    async def start(self) -> None:
        bind = self.runtime.settings.web_bind
        if self._sock is None:
            self._sock = socket.socket(socket.AF_INET6 if ":" in bind.host else socket.AF_INET, socket.SOCK_STREAM)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self._sock.bind((bind.host, bind.port))
            except OSError as exc:
                self._sock.close()
                raise RuntimeError(f"web UI cannot listen on {bind} ({exc.strerror}); set WEB_BIND") from None
        self.port = self._sock.getsockname()[1]
        # Accepted sockets inherit this. asyncio sets it only on sockets made with proto=IPPROTO_TCP, not on
        # these (proto 0): without it each answer written in two parts waited ~40 ms for a delayed ACK.
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        settings = self.runtime.settings
        limits = ConnectionLimits(settings.web_header_timeout_seconds, settings.web_body_timeout_seconds,
                                  settings.web_max_connections)
        # proxy_headers off: X-Forwarded-For is read only from TRUSTED_PROXIES (webui.auth.client_address).
        # backlog: asyncio accepts up to this many sockets in one go before any is closed to make room; with
        # uvicorn's 2048, a burst of 1,100 connections hit the 1024 file limit (EMFILE on every port).
        # uvicorn calls `http(config=..., server_state=..., app_state=...)`, so any protocol factory works; its
        # annotation asks for a class.
        config = uvicorn.Config(self.app, http=functools.partial(GuardedHttpProtocol, limits=limits),  # type: ignore[arg-type]
                                log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=5,
                                proxy_headers=False, backlog=ACCEPT_BATCH)
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="web-ui")
        while not self._server.started:
            if self._task.done():
                self._task.result()   # surfaces the startup error
                raise RuntimeError("web UI stopped during startup")
            await asyncio.sleep(0.01)
        log.info("web UI on http://%s:%s", bind.host if self._sock is None else self._sock.getsockname()[0],
                 self.port)

    async def stop(self) -> None:
        self.app.state.shutdown.set()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            try:
                await asyncio.wait_for(self._task, 10)
            finally:
                self._server = self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
