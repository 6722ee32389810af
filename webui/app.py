"""The web UI application and its component for `opendeep serve`: all wiring is here, in one place.

`create_app(runtime)` builds the Starlette app (pages, JSON API, live events, static files) around the shared
Runtime; `WebComponent` runs it with uvicorn, in this process, on WEB_BIND.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from opendeep.runtime import Runtime
from webui import api, pages
from webui.assistant import UIAssistantService
from webui.auth import LoginRateLimiter, csrf_token, session_user_id
from webui.routing import BodyLimit, HttpError, SecurityHeaders, error_json, is_api
from webui.views import format_when

log = logging.getLogger("opendeep.webui")

HERE = Path(__file__).resolve().parent
MAX_BODY = 1024 * 1024            # forms and JSON
MAX_UPLOAD = 5 * 1024 * 1024      # CSV imports
UPLOAD_PATHS = {"/campaigns/import": MAX_UPLOAD, "/dnd/import": MAX_UPLOAD, "/api/dnd/import": MAX_UPLOAD,
                "/api/campaigns/import": MAX_UPLOAD}
SESSION_COOKIE = "opendeep_session"
SESSION_MAX_AGE = 14 * 24 * 3600


def _template_globals(request: Request) -> dict:
    runtime: Runtime = request.app.state.runtime
    return {"csrf_token": csrf_token(request), "username": request.session.get("username"),
            "flashes": request.session.pop("flash", []),
            "logged_in": session_user_id(request) is not None, "settings": runtime.settings}


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


def create_app(runtime: Runtime, *, assistant: UIAssistantService | None = None,
               rate_limiter: LoginRateLimiter | None = None) -> Starlette:
    """The web UI for this runtime. SECRET_KEY signs sessions; empty = a random key for this app's lifetime."""
    secret = runtime.settings.secret_key or secrets.token_urlsafe(32)
    app = Starlette(
        routes=[*pages.routes(), *api.routes(), Mount("/static", StaticFiles(directory=HERE / "static"),
                                                      name="static")],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(BodyLimit, default_limit=MAX_BODY, limits=UPLOAD_PATHS),
            Middleware(SessionMiddleware, secret_key=secret, session_cookie=SESSION_COOKIE,
                       max_age=SESSION_MAX_AGE, same_site="lax"),
        ],
        exception_handlers={HttpError: _http_error, HTTPException: _http_error, Exception: _http_error},
    )
    app.state.runtime = runtime
    app.state.templates = Jinja2Templates(directory=HERE / "templates", context_processors=[_template_globals])
    app.state.templates.env.filters["when"] = format_when
    app.state.assistant = assistant or UIAssistantService(runtime.settings)
    app.state.rate_limiter = rate_limiter or LoginRateLimiter()
    app.state.shutdown = asyncio.Event()     # set on stop: ends the live event streams
    return app


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
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False,
                                timeout_graceful_shutdown=5, proxy_headers=False)
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
