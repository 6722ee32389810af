"""Accounts in the web UI: password check (scrypt), the signed session, CSRF tokens and login rate limiting.

The session is Starlette's SessionMiddleware cookie (signed with SECRET_KEY by itsdangerous; HttpOnly,
SameSite=Lax). It holds the user id and a CSRF token. Every state-changing request must echo that token, as a
form field `csrf_token` or an `X-CSRF-Token` header (`webui.routing` enforces it on every non-GET route).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import re
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request

from db import repo
from db.models import User
from opendeep.passwords import hash_password, verify_password

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
USERNAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{3,64}")
MIN_PASSWORD = 8


@functools.cache
def _dummy_hash() -> str:
    """Verified when the username does not exist, so a wrong name costs the same time as a wrong password."""
    return hash_password(secrets.token_hex(8))


class SignupError(ValueError):
    """Sign-up refused; the message says what to change."""


def csrf_token(request: Request) -> str:
    """The session's CSRF token (created on first use)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_matches(request: Request, submitted: str | None) -> bool:
    expected = request.session.get("csrf")
    return bool(expected and submitted and hmac.compare_digest(expected, submitted))


def session_user_id(request: Request) -> int | None:
    user_id = request.session.get("user_id")
    return user_id if isinstance(user_id, int) else None


def start_session(request: Request, user: User) -> None:
    """Log the user in: a fresh session (and CSRF token), so nothing from before login carries over."""
    request.session.clear()
    request.session["user_id"] = user.id
    request.session["username"] = user.username
    request.session["csrf"] = secrets.token_urlsafe(32)


def end_session(request: Request) -> None:
    request.session.clear()


async def authenticate(sessions: async_sessionmaker[AsyncSession], username: str, password: str) -> User | None:
    """The user if the password is right, else None (same cost either way). scrypt runs off the event loop."""
    async with sessions() as session:
        user = await repo.get_user_by_username(session, username.strip())
    stored = user.password_hash if user is not None else _dummy_hash()
    ok = await asyncio.to_thread(verify_password, password, stored)
    return user if ok and user is not None else None


async def sign_up(sessions: async_sessionmaker[AsyncSession], username: str, password: str) -> User:
    """Create an account (the caller checks ALLOW_SIGNUP). Raises SignupError with what to change."""
    username = username.strip()
    if not USERNAME_PATTERN.fullmatch(username):
        raise SignupError("username: 3 to 64 letters, digits or . _ @ -")
    if len(password) < MIN_PASSWORD:
        raise SignupError(f"password: at least {MIN_PASSWORD} characters")
    password_hash = await asyncio.to_thread(hash_password, password)
    async with sessions() as session:
        if await repo.get_user_by_username(session, username) is not None:
            raise SignupError(f"username {username!r} is taken")
        try:
            user = await repo.create_user(session, username, password_hash)
            await session.commit()
        except IntegrityError:
            raise SignupError(f"username {username!r} is taken") from None
    return user


class LoginRateLimiter:
    """Failed logins per client address and per username, in a sliding window.

    After `max_failures` failures within `window_seconds` for either key, further attempts are refused (HTTP
    429 with Retry-After) until the oldest failure leaves the window. A success clears the username's count.
    In memory: one process serves the web UI.
    """

    def __init__(self, max_failures: int = 5, window_seconds: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self._clock = clock
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    @staticmethod
    def keys(client_ip: str, username: str) -> list[str]:
        return [f"ip:{client_ip}", f"user:{username.strip().lower()}"]

    def _prune(self, key: str, now: float) -> deque[float]:
        failures = self._failures[key]
        while failures and failures[0] <= now - self.window_seconds:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return deque()
        return failures

    def retry_after(self, keys: Iterable[str]) -> float | None:
        """Seconds until a login may be tried again, or None if it may be tried now."""
        now = self._clock()
        waits = []
        for key in keys:
            failures = self._prune(key, now)
            if len(failures) >= self.max_failures:
                waits.append(failures[0] + self.window_seconds - now)
        return max(waits) if waits else None

    def record_failure(self, keys: Iterable[str]) -> None:
        now = self._clock()
        for key in keys:
            self._failures[key].append(now)

    def record_success(self, keys: Iterable[str]) -> None:
        for key in keys:
            if key.startswith("user:"):
                self._failures.pop(key, None)
