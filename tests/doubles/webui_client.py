"""Helpers for web UI tests: a Runtime on the test database and a logged-in HTTP client for the ASGI app.

The client speaks HTTP to the real app (cookies, forms, CSRF tokens) through httpx's ASGI transport, in the
test's own event loop, so the app shares the test's database engine on both SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
from starlette.applications import Starlette

from db import repo
from opendeep.events import EventHub
from opendeep.passwords import hash_password
from opendeep.runtime import Runtime
from opendeep.settings import load_settings

PASSWORD = "correct horse battery"
_HASH_CACHE: dict[str, str] = {}


def make_runtime(settings_env: dict[str, str], engine, sessions, **overrides: str) -> Runtime:
    settings = load_settings({**settings_env, **overrides}, dotenv=None)
    return Runtime(settings=settings, engine=engine, sessions=sessions, events=EventHub())


async def add_user(runtime: Runtime, username: str, password: str = PASSWORD) -> int:
    # One scrypt hash per password for the whole run: tests create many users.
    password_hash = _HASH_CACHE.get(password) or _HASH_CACHE.setdefault(password, hash_password(password))
    async with runtime.sessions() as session:
        user = await repo.create_user(session, username, password_hash)
        await session.commit()
        return user.id


class WebClient:
    """A browser-like client: keeps the session cookie and sends the CSRF token like the pages do."""

    def __init__(self, app: Starlette, client_ip: str = "127.0.0.1") -> None:
        transport = httpx.ASGITransport(app=app, client=(client_ip, 50000))
        self.http = httpx.AsyncClient(transport=transport, base_url="http://testserver", follow_redirects=False,
                                      timeout=10)
        self.csrf = ""

    async def aclose(self) -> None:
        await self.http.aclose()

    async def refresh_csrf(self) -> str:
        self.csrf = (await self.http.get("/api/session")).json()["csrf_token"]
        return self.csrf

    async def login(self, username: str, password: str = PASSWORD) -> httpx.Response:
        page = await self.http.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        response = await self.http.post("/login", data={"username": username, "password": password,
                                                         "csrf_token": token, "next": "/campaigns"})
        await self.refresh_csrf()
        return response

    async def form(self, path: str, data: dict[str, Any] | None = None, files: Any = None) -> httpx.Response:
        """POST a form as the page would (with the session's CSRF token)."""
        return await self.http.post(path, data={**(data or {}), "csrf_token": self.csrf}, files=files)

    async def api(self, method: str, path: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        """Call the JSON API with the CSRF header."""
        headers = {"x-csrf-token": self.csrf, **kwargs.pop("headers", {})}
        return await self.http.request(method, path, json=json, headers=headers, **kwargs)
