"""The account page (time zone, country for national phone numbers) and, for administrators, the users page.

A user's time zone is taken from the browser at their first login (the login form sends
`Intl.DateTimeFormat().resolvedOptions().timeZone`) and can be changed here; it is kept in the session so
every page shows times in it without a query. The country (`users.default_region`) lets CSV, DND and plans use
national numbers; empty = the DEFAULT_REGION setting.

Administrators (`opendeep user add NAME --admin`, the `users.is_admin` flag) list the users, disable or enable
them, and reset a password. A disabled user cannot log in, every session of theirs ends at once (the session
version is bumped), and the scheduler claims none of their tasks. Anyone else gets 404 for these pages: they
do not learn the pages exist. The admin flag is read from the database on every request, not the session.
"""

from __future__ import annotations

import asyncio
import secrets

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from db import repo
from db.models import Call, CallStatus, Campaign, User
from db.types import utcnow
from opendeep.passwords import hash_password
from opendeep.settings import Settings, parse_region
from webui.auth import MIN_PASSWORD, start_session
from webui.routing import HttpError, api, form_data, json_body, not_found, page
from webui.times import valid_zone, zone_names

GENERATED_PASSWORD_BYTES = 12   # 16 URL-safe characters


async def remember_browser_zone(sessions: async_sessionmaker[AsyncSession], user: User, browser_zone: str) -> User:
    """At login: a user without a time zone takes the browser's (if it is a real IANA zone)."""
    zone = valid_zone(browser_zone)
    if user.time_zone is not None or zone is None:
        return user
    async with sessions() as session:
        # tenant-safe: the signed-in user's own row
        await session.execute(update(User).where(User.id == user.id, User.time_zone.is_(None))
                              .values(time_zone=zone))
        await session.commit()
        return await repo.get_user(session, user.id) or user


async def user_region(session: AsyncSession, settings: Settings, user_id: int) -> str | None:
    """The country whose national numbers this user may write: their own, else DEFAULT_REGION, else None."""
    region = await session.scalar(select(User.default_region).where(User.id == user_id))
    return region or settings.default_region or None


async def request_region(request: Request) -> str | None:
    """`user_region` for the logged-in user of this request."""
    runtime = request.app.state.runtime
    async with runtime.sessions() as session:
        return await user_region(session, runtime.settings, request.state.user_id)


def _region(raw: str) -> str:
    """A country code phonenumbers knows, or "" (use DEFAULT_REGION). Raises ValueError with what to write."""
    try:
        return parse_region(raw)
    except ValueError as exc:
        raise ValueError(f"country {raw.strip()!r}: {exc}") from None


def _render(request: Request, template: str, context: dict, status_code: int = 200) -> Response:
    return request.app.state.templates.TemplateResponse(request, template, context, status_code=status_code)


def _flash(request: Request, message: str, kind: str = "info") -> None:
    request.session["flash"] = [*request.session.get("flash", [])[:4], {"kind": kind, "message": message[:300]}]


class PreferencesError(ValueError):
    """Time zone or country refused; `errors` says what is wrong with each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


async def save_preferences(sessions: async_sessionmaker[AsyncSession], user_id: int, raw_zone: str,
                           raw_region: str) -> tuple[str, str]:
    """Store the user's time zone and country (empty = DEFAULT_REGION); returns them. Raises PreferencesError."""
    zone = valid_zone(raw_zone)
    errors = [] if zone else [f"time zone {raw_zone.strip()!r} is not one we know: pick one from the list, e.g. "
                              f"America/New_York"]
    try:
        region = _region(raw_region)
    except ValueError as exc:
        errors.append(str(exc))
    if errors or zone is None:   # no zone always comes with an error
        raise PreferencesError(errors)
    async with sessions() as session:
        await session.execute(update(User).where(User.id == user_id)
                              .values(time_zone=zone, default_region=region or None))
        await session.commit()
    return zone, region


async def account_page(request: Request) -> Response:
    """GET: the user's time zone and country; POST: save them."""
    runtime = request.app.state.runtime
    async with runtime.sessions() as session:
        user = await repo.get_user(session, request.state.user_id)
    if user is None:
        raise not_found("account")
    context = {"zones": zone_names(), "time_zone": user.time_zone or "UTC", "region": user.default_region or "",
               "default_region": runtime.settings.default_region}
    if request.method == "GET":
        return _render(request, "account.html", context)
    form = await form_data(request)
    raw_zone, raw_region = str(form.get("time_zone") or ""), str(form.get("region") or "")
    try:
        zone, region = await save_preferences(runtime.sessions, request.state.user_id, raw_zone, raw_region)
    except PreferencesError as exc:
        return _render(request, "account.html", {**context, "time_zone": raw_zone, "region": raw_region,
                                                 "error": f"{exc}."}, 400)
    request.session["tz"] = zone
    _flash(request, f"Saved: times are shown in {zone}"
                    + (f"; national numbers are read as {region} numbers." if region else "."))
    return RedirectResponse("/account", status_code=303)


async def api_account(request: Request) -> Response:
    """GET /api/account: name, time zone, country, admin flag; POST {"time_zone", "region"}: change them."""
    runtime = request.app.state.runtime
    if request.method == "POST":
        body = await json_body(request)
        try:
            zone, _ = await save_preferences(runtime.sessions, request.state.user_id, str(body.get("time_zone") or ""),
                                             str(body.get("region") or ""))
        except PreferencesError as exc:
            raise HttpError(400, "invalid_preferences", str(exc), details=exc.errors) from None
        request.session["tz"] = zone
    async with runtime.sessions() as session:
        user = await repo.get_user(session, request.state.user_id)
    if user is None:
        raise not_found("account")
    return JSONResponse({"username": user.username, "time_zone": user.time_zone or "UTC",
                         "region": user.default_region or "", "default_region": runtime.settings.default_region,
                         "is_admin": user.is_admin})


# ---------------------------------------------------------------- administrators


async def _admin(request: Request) -> User:
    """The logged-in administrator, or 404 for anyone else (the page does not exist for them)."""
    async with request.app.state.runtime.sessions() as session:
        user = await repo.get_user(session, request.state.user_id)
    if user is None or not user.is_admin or user.disabled_at is not None:
        raise not_found("page")
    return user


async def _users(session: AsyncSession) -> list[dict]:
    campaigns = dict((await session.execute(
        select(Campaign.user_id, func.count()).group_by(Campaign.user_id))).all())
    live = dict((await session.execute(
        select(Call.user_id, func.count()).where(Call.status != CallStatus.ENDED).group_by(Call.user_id))).all())
    # tenant-safe: the admin page (admins only, checked by the route): every account by design
    users = await session.scalars(select(User).order_by(User.username))
    return [{"id": u.id, "username": u.username, "is_admin": u.is_admin, "created_at": u.created_at,
             "disabled_at": u.disabled_at, "campaigns": campaigns.get(u.id, 0), "live_calls": live.get(u.id, 0)}
            for u in users]


async def _target(request: Request) -> User:
    async with request.app.state.runtime.sessions() as session:
        user = await repo.get_user(session, int(request.path_params["user_id"]))
    if user is None:
        raise not_found("user")
    return user


class AdminRefused(ValueError):
    """An administrator's request that cannot be done as asked; the message says why."""


async def set_disabled(sessions: async_sessionmaker[AsyncSession], admin: User, target: User, disabled: bool) -> None:
    """Disable (every session of the user ends at once; the scheduler skips their tasks) or enable a user."""
    if disabled and target.id == admin.id:
        raise AdminRefused("you cannot disable your own account")
    async with sessions() as session:
        if disabled:
            # tenant-safe: admin action on the account the admin chose (route checks is_admin)
            await session.execute(update(User).where(User.id == target.id, User.disabled_at.is_(None)).values(
                disabled_at=utcnow(), session_version=User.session_version + 1))
        else:
            # tenant-safe: admin action on the account the admin chose (route checks is_admin)
            await session.execute(update(User).where(User.id == target.id).values(disabled_at=None))
        await session.commit()


async def reset_password(sessions: async_sessionmaker[AsyncSession], target: User, typed: str) -> str | None:
    """Set `typed` as the user's password, or a generated one if empty (returned, to be shown once). Every
    session of the user ends. Raises AdminRefused for a password that is too short."""
    if typed and len(typed) < MIN_PASSWORD:
        raise AdminRefused(f"the new password needs at least {MIN_PASSWORD} characters")
    password = typed or secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
    password_hash = await asyncio.to_thread(hash_password, password)
    async with sessions() as session:
        # tenant-safe: admin action on the account the admin chose (route checks is_admin)
        await session.execute(update(User).where(User.id == target.id).values(
            password_hash=password_hash, session_version=User.session_version + 1))
        await session.commit()
    return None if typed else password


async def _restart_own_session(request: Request, admin: User, target: User) -> None:
    if target.id == admin.id:   # the administrator's own sessions ended too: this one starts afresh
        async with request.app.state.runtime.sessions() as session:
            start_session(request, await repo.get_user(session, admin.id) or admin)


def _sentence(message: str) -> str:
    return message[0].upper() + message[1:] + "."


async def users_page(request: Request, *, shown: dict | None = None, error: str | None = None,
                     status_code: int = 200) -> Response:
    """The users, with disable / enable and password reset (administrators only)."""
    await _admin(request)
    async with request.app.state.runtime.sessions() as session:
        users = await _users(session)
    return _render(request, "admin_users.html", {"users": users, "shown": shown, "error": error,
                                                 "min_password": MIN_PASSWORD}, status_code)


async def user_disable(request: Request) -> Response:
    """Disable (or, with action=enable, enable) a user. Disabling ends every session of theirs at once."""
    admin = await _admin(request)
    form = await form_data(request)
    target = await _target(request)
    enable = form.get("action") == "enable"
    try:
        await set_disabled(request.app.state.runtime.sessions, admin, target, not enable)
    except AdminRefused as exc:
        return await users_page(request, error=_sentence(str(exc)), status_code=400)
    _flash(request, f"{target.username} is enabled again: they can log in, and their campaigns are dialed." if enable
           else f"{target.username} is disabled: they are logged out everywhere, cannot log in, and none of their "
                f"tasks is dialed (calls already on the line finish).")
    return RedirectResponse("/admin/users", status_code=303)


async def user_reset_password(request: Request) -> Response:
    """Set a user's password: the one the administrator typed, or a generated one shown once on this page.
    Every session of that user ends."""
    admin = await _admin(request)
    form = await form_data(request)
    target = await _target(request)
    try:
        generated = await reset_password(request.app.state.runtime.sessions, target,
                                         str(form.get("new_password") or ""))
    except AdminRefused as exc:
        return await users_page(request, error=_sentence(str(exc)), status_code=400)
    await _restart_own_session(request, admin, target)
    # A generated password is shown in this answer only (never in a flash: the session cookie is readable).
    response = await users_page(request, shown={"username": target.username, "password": generated})
    response.headers["cache-control"] = "no-store"   # the back button must not show the password again
    return response


async def api_users(request: Request) -> Response:
    """GET /api/admin/users (administrators only; 404 for anyone else)."""
    await _admin(request)
    async with request.app.state.runtime.sessions() as session:
        users = await _users(session)
    return JSONResponse({"users": [{**user, "created_at": user["created_at"].isoformat(),
                                    "disabled_at": user["disabled_at"].isoformat() if user["disabled_at"] else None}
                                   for user in users]})


async def api_user_action(request: Request) -> Response:
    """POST /api/admin/users/{id}/disable | enable | password (body {"new_password"}: empty = generated)."""
    admin = await _admin(request)
    target = await _target(request)
    action = request.path_params["action"]
    sessions = request.app.state.runtime.sessions
    try:
        if action in ("disable", "enable"):
            await set_disabled(sessions, admin, target, action == "disable")
            return JSONResponse({"id": target.id, "disabled": action == "disable"})
        if action == "password":
            body = await json_body(request)
            generated = await reset_password(sessions, target, str(body.get("new_password") or ""))
            await _restart_own_session(request, admin, target)
            return JSONResponse({"id": target.id, "password": generated}, headers={"cache-control": "no-store"})
    except AdminRefused as exc:
        raise HttpError(400, "refused", str(exc)) from None
    raise not_found("action")


def routes() -> list[Route]:
    return [
        page("/account", account_page, ["GET", "POST"]),
        api("/api/account", api_account, ["GET", "POST"]),
        page("/admin/users", users_page),
        page("/admin/users/{user_id:int}/disable", user_disable, ["POST"]),
        page("/admin/users/{user_id:int}/password", user_reset_password, ["POST"]),
        api("/api/admin/users", api_users),
        api("/api/admin/users/{user_id:int}/{action:str}", api_user_action, ["POST"]),
    ]
