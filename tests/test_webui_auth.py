"""Accounts over HTTP: login and logout, sign-up only when allowed, CSRF on every state change, rate limits,
request size limits, and the API's error shape."""

from __future__ import annotations

import re

import pytest_asyncio
from starlette.routing import Route

from tests.doubles.webui_client import PASSWORD, WebClient, add_user, make_runtime
from webui.app import create_app
from webui.auth import LoginRateLimiter


@pytest_asyncio.fixture
async def web(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    app = create_app(runtime)
    client = WebClient(app)
    yield runtime, app, client
    await client.aclose()


async def test_pages_need_a_login_and_the_login_returns_to_the_page_asked_for(web):
    runtime, _, client = web
    await add_user(runtime, "alice")
    response = await client.http.get("/campaigns/7?x=1")
    assert response.status_code == 303 and response.headers["location"] == "/login?next=/campaigns/7%3Fx%3D1"
    api = await client.http.get("/api/campaigns")
    assert api.status_code == 401 and api.json()["error"]["code"] == "not_authenticated"
    login = await client.login("alice")
    assert login.status_code == 303 and login.headers["location"] == "/campaigns"
    assert "httponly" in login.headers["set-cookie"].lower() and "samesite=lax" in login.headers["set-cookie"].lower()
    page = await client.http.get("/campaigns")
    assert page.status_code == 200 and "alice" in page.text
    assert page.headers["x-frame-options"] == "DENY" and "script-src 'self'" in page.headers["content-security-policy"]


async def test_login_refuses_a_foreign_next_url(web):
    runtime, _, client = web
    await add_user(runtime, "alice")
    page = await client.http.get("/login?next=//evil.example/x")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    response = await client.http.post("/login", data={"username": "alice", "password": PASSWORD,
                                                      "csrf_token": token, "next": "https://evil.example/"})
    assert response.headers["location"] == "/campaigns"


async def test_wrong_password_and_unknown_user_look_the_same(web):
    runtime, _, client = web
    await add_user(runtime, "alice")
    await client.refresh_csrf()
    wrong = await client.api("POST", "/api/login", {"username": "alice", "password": "nope"})
    unknown = await client.api("POST", "/api/login", {"username": "mallory", "password": "nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"error": {"code": "wrong_credentials",
                                                        "message": "wrong username or password"}}


async def test_logout_ends_the_session(web):
    runtime, _, client = web
    await add_user(runtime, "alice")
    await client.login("alice")
    assert (await client.form("/logout")).status_code == 303
    assert (await client.http.get("/campaigns")).status_code == 303
    assert (await client.http.get("/api/session")).json()["user"] is None


async def test_every_state_changing_route_refuses_a_missing_or_wrong_csrf_token(web):
    runtime, app, client = web
    await add_user(runtime, "alice")
    await client.login("alice")
    posts = [route for route in app.routes if isinstance(route, Route)
             and set(route.methods or ()) - {"GET", "HEAD"}]
    assert len(posts) >= 25
    for route in posts:
        path = re.sub(r"\{(\w+):int\}", "1", route.path)
        path = re.sub(r"\{action:str\}", "pause", path)
        path = re.sub(r"\{phone_number:str\}", "+14155550101", path)
        method = sorted(set(route.methods) - {"GET", "HEAD"})[0]
        if path.startswith("/api/"):
            missing = await client.http.request(method, path, json={})
            wrong = await client.http.request(method, path, json={}, headers={"x-csrf-token": "forged"})
        else:
            missing = await client.http.request(method, path, data={"x": "1"})
            wrong = await client.http.request(method, path, data={"csrf_token": "forged"})
        for response in (missing, wrong):
            assert response.status_code == 403, (method, path, response.status_code)
        if path.startswith("/api/"):
            assert missing.json()["error"]["code"] == "csrf_failed"


async def test_login_is_rate_limited_per_username_and_address(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    now = [1000.0]
    app = create_app(runtime, rate_limiter=LoginRateLimiter(max_failures=3, window_seconds=60,
                                                            clock=lambda: now[0]))
    await add_user(runtime, "alice")
    client, other_address = WebClient(app, "10.0.0.1"), WebClient(app, "10.0.0.2")
    try:
        await client.refresh_csrf()
        await other_address.refresh_csrf()
        for _ in range(3):
            response = await client.api("POST", "/api/login", {"username": "alice", "password": "guess"})
            assert response.status_code == 401
        blocked = await client.api("POST", "/api/login", {"username": "alice", "password": PASSWORD})
        assert blocked.status_code == 429 and blocked.headers["retry-after"] == "61"
        assert blocked.json()["error"]["code"] == "too_many_logins"
        # Only the guessing address is locked out of the account; the per-username cap is higher
        # (tests/security/test_web_login_limits.py).
        elsewhere = await other_address.api("POST", "/api/login", {"username": "alice", "password": PASSWORD})
        assert elsewhere.status_code == 200
        page = await client.http.post("/login", data={"username": "alice", "password": PASSWORD,
                                                      "csrf_token": client.csrf})
        assert page.status_code == 429 and "Too many failed logins" in page.text
        now[0] += 61
        assert (await client.api("POST", "/api/login", {"username": "alice", "password": PASSWORD})).status_code == 200
    finally:
        await client.aclose()
        await other_address.aclose()


async def test_signup_is_refused_unless_allowed(web, settings_env, engine, sessions):
    _, _, client = web
    assert (await client.http.get("/signup")).status_code == 404
    await client.refresh_csrf()
    refused = await client.api("POST", "/api/signup", {"username": "carol", "password": "long enough pw"})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"

    open_app = create_app(make_runtime(settings_env, engine, sessions, ALLOW_SIGNUP="true"))
    visitor = WebClient(open_app)
    try:
        await visitor.refresh_csrf()
        short = await visitor.api("POST", "/api/signup", {"username": "carol", "password": "short"})
        assert short.status_code == 400 and "at least 8" in short.json()["error"]["message"]
        created = await visitor.api("POST", "/api/signup", {"username": "carol", "password": "long enough pw"})
        assert created.status_code == 201 and created.json()["user"]["username"] == "carol"
        again = WebClient(open_app)
        await again.refresh_csrf()
        taken = await again.api("POST", "/api/signup", {"username": "carol", "password": "long enough pw"})
        assert taken.status_code == 400 and "taken" in taken.json()["error"]["message"]
        await again.aclose()
        assert (await visitor.http.get("/campaigns")).status_code == 200
    finally:
        await visitor.aclose()


async def test_api_errors_have_one_shape_and_bodies_have_a_size_limit(web):
    runtime, _, client = web
    await add_user(runtime, "alice")
    await client.login("alice")
    huge = await client.api("POST", "/api/dnd", {"phone_number": "+14155550101", "reason": "x" * 2_000_000})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"
    not_json = await client.http.post("/api/dnd", content=b"{", headers={"x-csrf-token": client.csrf,
                                                                          "content-type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
    wrong_type = await client.http.post("/api/dnd", content=b"x", headers={"x-csrf-token": client.csrf,
                                                                            "content-type": "text/plain"})
    assert wrong_type.status_code == 415
    unknown = await client.http.get("/api/nothing-here")
    assert unknown.status_code == 404 and unknown.json() == {"error": {"code": "not_found", "message": "no such page"}}
    wrong_method = await client.http.put("/api/campaigns", headers={"x-csrf-token": client.csrf})
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    async def chunks():
        for _ in range(40):
            yield b"x" * 65536

    chunked = await client.http.post("/api/dnd", content=chunks(),
                                     headers={"x-csrf-token": client.csrf, "content-type": "application/json"})
    assert chunked.status_code == 413
