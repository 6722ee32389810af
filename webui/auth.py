"""Accounts in the web UI: password check (scrypt), the signed session, CSRF tokens and login rate limiting.

The session is Starlette's SessionMiddleware cookie (signed with SECRET_KEY by itsdangerous; HttpOnly,
SameSite=Lax, Secure with SESSION_COOKIE_SECURE). It holds the user id, the user's session version and a CSRF
token. Every state-changing request must echo that token, as a form field `csrf_token` or an `X-CSRF-Token`
header (`webui.routing` enforces it on every non-GET route).

A signed cookie cannot be taken back, so every request compares the version it carries with
`users.session_version`; logout and a password change bump that number, which ends every session of the user,
including cookies copied before.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
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


class PasswordChangeError(ValueError):
    """Password change refused. `code` is "wrong_password" (the current one) or "weak_password" (the new one)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AccountDisabled(Exception):
    """The password was right but an administrator disabled the account."""

    def __init__(self, username: str) -> None:
        super().__init__(f"the account {username!r} is disabled; ask your administrator")


class TooManyLogins(Exception):
    """A login (or a check of the current password) refused before any hashing: a failure limit is reached."""

    def __init__(self, retry_after: float) -> None:
        self.seconds = int(retry_after) + 1
        super().__init__(f"too many failed logins; try again in {self.seconds} s")


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
    request.session["version"] = user.session_version
    request.session["csrf"] = secrets.token_urlsafe(32)
    request.session["tz"] = user.time_zone or "UTC"
    request.session["admin"] = bool(user.is_admin)


async def current_user_id(request: Request, sessions: async_sessionmaker[AsyncSession]) -> int | None:
    """The session's user, if the session is still valid: one query compares its version with the user's.

    A session from before a logout or a password change (or of a deleted user) is cleared here, so the
    request goes on as a visitor's.
    """
    user_id = session_user_id(request)
    if user_id is None:
        return None
    async with sessions() as session:
        row = (await session.execute(select(User.session_version, User.disabled_at)
                                     .where(User.id == user_id))).first()
    version = row.session_version if row is not None and row.disabled_at is None else None
    carried = request.session.get("version")
    if version is None or type(carried) is not int or carried != version:
        request.session.clear()
        return None
    return user_id


async def end_every_session(sessions: async_sessionmaker[AsyncSession], request: Request) -> None:
    """Log out: this session and every other one of the user (other browsers, copied cookies)."""
    user_id = session_user_id(request)
    if user_id is not None:
        async with sessions() as session:
            await _bump_session_version(session, user_id)
            await session.commit()
    request.session.clear()


async def _bump_session_version(session: AsyncSession, user_id: int) -> None:
    await session.execute(update(User).where(User.id == user_id)
                          .values(session_version=User.session_version + 1))


async def authenticate(sessions: async_sessionmaker[AsyncSession], username: str, password: str) -> User | None:
    """The user if the password is right, else None (same cost either way). scrypt runs off the event loop."""
    async with sessions() as session:
        user = await repo.get_user_by_username(session, username.strip())
    stored = user.password_hash if user is not None else _dummy_hash()
    ok = await asyncio.to_thread(verify_password, password, stored)
    return user if ok and user is not None else None


async def checked_login(limiter: LoginRateLimiter, sessions: async_sessionmaker[AsyncSession], address: str,
                        username: str, password: str) -> User | None:
    """`authenticate` behind the rate limiter: the attempt is counted before the password is checked, so
    parallel guesses cannot slip through while the first ones are hashing. Raises TooManyLogins, and
    AccountDisabled for a disabled account (said only to whoever knows its password)."""
    attempt = limiter.reserve(address, username)
    user = await authenticate(sessions, username, password)
    if user is not None:
        limiter.succeeded(attempt)
        if user.disabled_at is not None:
            raise AccountDisabled(user.username)
    return user


async def change_password(sessions: async_sessionmaker[AsyncSession], limiter: LoginRateLimiter, address: str,
                          user_id: int, current_password: str, new_password: str) -> User:
    """Set a new password after checking the current one (rate limited like a login), and end every session
    of the user. Returns the user with the new session version, for a fresh session of this client.
    Raises PasswordChangeError or TooManyLogins."""
    async with sessions() as session:
        user = await repo.get_user(session, user_id)
    if user is None:
        raise PasswordChangeError("wrong_password", "this account no longer exists")
    if await checked_login(limiter, sessions, address, user.username, current_password) is None:
        raise PasswordChangeError("wrong_password", "the current password is wrong")
    if len(new_password) < MIN_PASSWORD:
        raise PasswordChangeError("weak_password", f"the new password needs at least {MIN_PASSWORD} characters")
    password_hash = await asyncio.to_thread(hash_password, new_password)
    async with sessions() as session:
        await session.execute(update(User).where(User.id == user_id).values(password_hash=password_hash))
        await _bump_session_version(session, user_id)
        await session.commit()
        user = await repo.get_user(session, user_id)
    assert user is not None
    return user


def client_address(request: Request, trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """The web client's address: the peer's, or, when the peer is a trusted proxy (TRUSTED_PROXIES), the
    nearest address in X-Forwarded-For that is not a trusted proxy. Anyone else's X-Forwarded-For is ignored:
    a client could write any address there."""
    peer = request.client.host if request.client else "unknown"
    if not _is_in(peer, trusted_proxies):
        return peer
    hops = [hop.strip() for value in request.headers.getlist("x-forwarded-for") for hop in value.split(",")]
    hops = [hop for hop in hops if hop]
    for hop in reversed(hops):   # each proxy appends the address it saw: read from the nearest one back
        if not _is_in(hop, trusted_proxies):
            return hop[:64]
    return hops[0][:64] if hops else peer


def _is_in(host: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


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


@dataclass(frozen=True)
class LoginAttempt:
    """A reserved attempt: counted as a failure under `keys` at `at` until `succeeded` takes it back."""

    keys: tuple[str, ...]
    at: float


class LoginRateLimiter:
    """Failed logins in a sliding window, per (username, client address), per username and per address.

    `max_failures` failures of one username from one address lock that pair; the caps per username and per
    address are higher, so guesses from one place do not lock the real user out everywhere else (and behind a
    reverse proxy, see TRUSTED_PROXIES). Refused attempts answer 429 with Retry-After until the oldest failure
    leaves the window. An attempt is reserved before its password is checked; a success takes the reservation
    back and clears the pair's count. In memory: one process serves the web UI.
    """

    def __init__(self, max_failures: int = 5, max_failures_per_user: int = 50, max_failures_per_address: int = 50,
                 window_seconds: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.max_failures_per_user = max_failures_per_user
        self.max_failures_per_address = max_failures_per_address
        self.window_seconds = window_seconds
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._swept_at = clock()

    def _limits(self, address: str, username: str) -> list[tuple[str, int]]:
        name = username.strip().lower()
        return [(f"pair:{address} {name}", self.max_failures), (f"user:{name}", self.max_failures_per_user),
                (f"address:{address}", self.max_failures_per_address)]

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.get(key, deque())
        while failures and failures[0] <= now - self.window_seconds:
            failures.popleft()
        if not failures:
            self._failures.pop(key, None)
        return failures

    def reserve(self, address: str, username: str) -> LoginAttempt:
        """Count an attempt as failed now, or raise TooManyLogins. Check and count happen with no await in
        between, so concurrent attempts see each other."""
        now = self._clock()
        if now - self._swept_at > self.window_seconds:   # forget keys nobody has tried for a window
            self._swept_at = now
            for key in list(self._failures):
                self._recent(key, now)
        limits = self._limits(address, username)
        waits = [failures[0] + self.window_seconds - now for key, limit in limits
                 if len(failures := self._recent(key, now)) >= limit]
        if waits:
            raise TooManyLogins(max(waits))
        for key, _ in limits:
            self._failures.setdefault(key, deque()).append(now)
        return LoginAttempt(tuple(key for key, _ in limits), now)

    def succeeded(self, attempt: LoginAttempt) -> None:
        """The password was right: the pair starts over; the username's and the address's counts only lose this
        attempt (an attacker's failures elsewhere still count)."""
        pair, *others = attempt.keys
        self._failures.pop(pair, None)
        for key in others:
            failures = self._failures.get(key)
            if failures is not None and attempt.at in failures:
                failures.remove(attempt.at)
                if not failures:
                    del self._failures[key]
