"""Session cookies over HTTP: a copy saved before logout, sessions in other browsers after a password change,
and the Secure flag.

Before: the signed cookie was the whole session, so a copy saved before logout still worked for its 14 days
(GET 200, POST /api/dnd 201); there was no password change and no way to mark the cookie Secure.
"""

from __future__ import annotations

import re

import pytest_asyncio

from tests.doubles.webui_client import PASSWORD, WebClient, add_user, make_runtime
from webui.app import SESSION_COOKIE, create_app

NEW_PASSWORD = "a brand new passphrase"


@pytest_asyncio.fixture
async def web(settings_env, engine, sessions):
    """`browser()` -> a new WebClient of one app, as many as a test needs (other browsers, a thief)."""
    runtime = make_runtime(settings_env, engine, sessions)
    app = create_app(runtime)
    await add_user(runtime, "alice")
    opened: list[WebClient] = []

    def browser() -> WebClient:
        opened.append(WebClient(app))
        return opened[-1]

    yield browser
    for client in opened:
        await client.aclose()


def steal(victim: WebClient, thief: WebClient) -> None:
    """The thief has a copy of the victim's cookie and CSRF token (a shared computer, a backup, malware)."""
    thief.http.cookies.set(SESSION_COOKIE, victim.http.cookies[SESSION_COOKIE], domain="testserver.local")
    thief.csrf = victim.csrf


async def add_dnd(client: WebClient) -> int:
    return (await client.api("POST", "/api/dnd", {"phone_number": "+14155550101"})).status_code


async def test_a_cookie_saved_before_logout_is_refused_after_it(web):
    alice, thief = web(), web()
    await alice.login("alice")
    steal(alice, thief)
    assert (await thief.http.get("/campaigns")).status_code == 200   # the copy works while alice is logged in

    assert (await alice.form("/logout")).status_code == 303
    page = await thief.http.get("/campaigns")
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    assert await add_dnd(thief) == 401
    assert (await thief.http.get("/api/session")).json()["user"] is None


async def test_logging_out_through_the_api_ends_the_other_sessions_too(web):
    laptop, phone = web(), web()
    await laptop.login("alice")
    await phone.login("alice")
    assert (await laptop.api("POST", "/api/logout")).json() == {"logged_out": True}
    assert await add_dnd(phone) == 401


async def test_a_password_change_on_the_page_ends_every_other_session(web):
    laptop, phone, thief = web(), web(), web()
    await laptop.login("alice")
    await phone.login("alice")
    steal(phone, thief)
    form = await laptop.http.get("/account/password")
    assert form.status_code == 200 and 'name="current_password"' in form.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)

    differ = await laptop.http.post("/account/password", data={
        "csrf_token": token, "current_password": PASSWORD, "new_password": NEW_PASSWORD,
        "new_password_again": NEW_PASSWORD + "x"})
    assert differ.status_code == 400 and "differ" in differ.text
    wrong = await laptop.http.post("/account/password", data={
        "csrf_token": token, "current_password": "not it", "new_password": NEW_PASSWORD,
        "new_password_again": NEW_PASSWORD})
    assert wrong.status_code == 400 and "current password is wrong" in wrong.text
    forged = await laptop.http.post("/account/password", data={
        "csrf_token": "forged", "current_password": PASSWORD, "new_password": NEW_PASSWORD,
        "new_password_again": NEW_PASSWORD})
    assert forged.status_code == 403

    changed = await laptop.http.post("/account/password", data={
        "csrf_token": token, "current_password": PASSWORD, "new_password": NEW_PASSWORD,
        "new_password_again": NEW_PASSWORD})
    assert changed.status_code == 303
    assert "Password changed" in (await laptop.http.get(changed.headers["location"])).text   # still logged in here
    assert await add_dnd(phone) == 401 and await add_dnd(thief) == 401

    again = web()
    assert (await again.login("alice", PASSWORD)).status_code == 401
    assert (await again.login("alice", NEW_PASSWORD)).status_code == 303


async def test_a_password_change_through_the_api_ends_every_other_session(web):
    script, browser = web(), web()
    await script.login("alice")
    await browser.login("alice")
    wrong = await script.api("POST", "/api/account/password", {"current_password": "nope",
                                                               "new_password": NEW_PASSWORD})
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "wrong_password"
    short = await script.api("POST", "/api/account/password", {"current_password": PASSWORD, "new_password": "short"})
    assert short.status_code == 400 and short.json()["error"]["code"] == "weak_password"

    changed = await script.api("POST", "/api/account/password", {"current_password": PASSWORD,
                                                                 "new_password": NEW_PASSWORD})
    assert changed.status_code == 200
    script.csrf = changed.json()["csrf_token"]   # the new session's token
    assert await add_dnd(script) == 201
    assert await add_dnd(browser) == 401


async def test_guessing_the_current_password_is_rate_limited_like_a_login(web):
    thief = web()
    await thief.login("alice")
    statuses = [(await thief.api("POST", "/api/account/password", {"current_password": f"guess {n}",
                                                                   "new_password": NEW_PASSWORD})).status_code
                for n in range(7)]
    assert statuses == [403] * 5 + [429] * 2


async def test_the_session_cookie_is_secure_only_when_the_setting_says_so(settings_env, engine, sessions):
    for setting, secure in (("false", False), ("true", True)):
        runtime = make_runtime(settings_env, engine, sessions, SESSION_COOKIE_SECURE=setting)
        if not secure:
            await add_user(runtime, "alice")
        client = WebClient(create_app(runtime))
        try:
            login = await client.login("alice")
        finally:
            await client.aclose()
        cookie = login.headers["set-cookie"].lower()
        assert cookie.startswith(f"{SESSION_COOKIE}=") and "httponly" in cookie
        assert ("; secure" in cookie) is secure, cookie
