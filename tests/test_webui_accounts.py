"""Accounts: the time zone (from the browser at first login, editable), the country for national numbers, and the
administrators' users page: list, disable (no login, sessions end, nothing dialed), reset password; anyone else
gets 404 (issue 15, items 6, 7, 13)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest_asyncio
from sqlalchemy import update

from ami_controller.scheduler import claim_due_tasks
from db import repo
from db.models import User
from db.types import utcnow
from tests.doubles.webui_client import PASSWORD, WebClient, add_user, make_runtime
from tests.test_webui_plan_csv import a_plan
from webui.app import create_app
from webui.orchestrator import confirm_plan


@pytest_asyncio.fixture
async def world(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    app = create_app(runtime)
    admin_id = await add_user(runtime, "root")
    async with runtime.sessions() as session:
        await session.execute(update(User).where(User.id == admin_id).values(is_admin=True))
        await session.commit()
    alice_id = await add_user(runtime, "alice")
    clients: list[WebClient] = []

    async def client_for(name: str | None = None, password: str = PASSWORD) -> WebClient:
        client = WebClient(app)
        clients.append(client)
        if name:
            await client.login(name, password)
        return client

    yield runtime, client_for, admin_id, alice_id
    for client in clients:
        await client.aclose()


async def _login_form(client: WebClient, username: str, password: str, tz: str = ""):
    page = await client.http.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return await client.http.post("/login", data={"username": username, "password": password, "tz": tz,
                                                  "csrf_token": token, "next": "/campaigns"})


async def _user(runtime, user_id: int) -> User:
    async with runtime.sessions() as session:
        return await repo.get_user(session, user_id)


# ---------------------------------------------------------------- time zone and country


async def test_the_first_login_takes_the_browsers_zone_and_pages_show_times_in_it(world):
    runtime, client_for, _, alice_id = world
    client = await client_for()
    assert (await _login_form(client, "alice", PASSWORD, tz="America/Chicago")).status_code == 303
    assert (await _user(runtime, alice_id)).time_zone == "America/Chicago"
    await client.refresh_csrf()
    async with runtime.sessions() as session:
        await repo.add_dnd(session, alice_id, "+14155550101", "asked")
        await session.commit()
    page = (await client.http.get("/campaigns")).text
    assert "Times in America/Chicago" in page

    other = await client_for()   # a later login from a browser elsewhere does not move the user's zone
    await _login_form(other, "alice", PASSWORD, tz="Asia/Tokyo")
    assert (await _user(runtime, alice_id)).time_zone == "America/Chicago"
    assert (await _login_form(await client_for(), "root", PASSWORD, tz="Not/AZone")).status_code == 303
    assert (await _user(runtime, world[2])).time_zone is None


async def test_the_account_page_changes_zone_and_country_and_refuses_unknown_ones(world):
    runtime, client_for, _, alice_id = world
    client = await client_for("alice")
    page = (await client.http.get("/account")).text
    assert 'name="time_zone" value="UTC"' in page and "Europe/Paris" in page
    bad = await client.form("/account", {"time_zone": "Mars/Olympus", "region": "XX"})
    assert bad.status_code == 400
    assert "time zone &#39;Mars/Olympus&#39; is not one we know" in bad.text
    assert "country &#39;XX&#39;: expected a two-letter country code" in bad.text
    assert (await _user(runtime, alice_id)).time_zone is None
    ok = await client.form("/account", {"time_zone": "Europe/Paris", "region": "us"})
    assert ok.status_code == 303
    user = await _user(runtime, alice_id)
    assert (user.time_zone, user.default_region) == ("Europe/Paris", "US")
    assert "Times in Europe/Paris" in (await client.http.get("/dnd")).text


async def test_with_a_country_national_numbers_are_stored_in_e164_in_dnd_csv_and_plans(world):
    runtime, client_for, _, alice_id = world
    client = await client_for("alice")
    refused = await client.form("/dnd", {"phone_number": "(415) 555-0123"})
    assert refused.status_code == 303
    page = (await client.http.get("/dnd")).text
    assert "&#39;(415) 555-0123&#39; has no valid country code" in page and "0 number(s) on your list" in page
    await client.form("/account", {"time_zone": "UTC", "region": "US"})
    await client.form("/dnd", {"phone_number": "(415) 555-0123"})
    await client.form("/dnd/import", files={"file": ("dnd.csv", b"phone_number\n415-555-0124\n")})
    async with runtime.sessions() as session:
        assert [e.phone_number for e in await repo.list_dnd(session, alice_id)] == ["+14155550123", "+14155550124"]
    response = await client.api("POST", "/api/campaigns/import?name=shops", content=(
        b"name,phone_number\nA,415 555 0101\nB,+44 20 7946 0958\nC,555\nD,\n"), headers={"content-type": "text/csv"})
    assert response.status_code == 422
    details = response.json()["error"]["details"]
    assert [d["line"] for d in details] == [4, 5]
    assert "'555' is not a valid phone number: write it in E.164, e.g. +14155550123, or as a national number " \
           "of US" in details[0]["reason"] and details[1]["reason"] == "phone number is empty"
    good = await client.api("POST", "/api/campaigns/import?name=shops", content=(
        b"name,phone_number\nA,415 555 0101\nB,+44 20 7946 0958\n"), headers={"content-type": "text/csv"})
    assert good.status_code == 201
    async with runtime.sessions() as session:
        numbers = sorted(t.phone_number for t in await repo.list_tasks(session, alice_id))
    assert numbers == ["+14155550101", "+442079460958"]
    plan = a_plan(targets=[{"name": "Bright Smile", "phone_number": "(415) 555-0105", "objective": "Book"}])
    checked = (await client.api("POST", "/api/plans/validate", json={"plan": plan})).json()
    assert checked["valid"] and checked["plan"]["targets"][0]["phone_number"] == "+14155550105"


async def test_default_region_setting_applies_to_users_without_their_own(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions, DEFAULT_REGION="GB")
    await add_user(runtime, "carol")
    client = WebClient(create_app(runtime))
    await client.login("carol")
    added = await client.api("POST", "/api/dnd", json={"phone_number": "020 7946 0958"})
    assert added.status_code == 201 and added.json()["phone_number"] == "+442079460958"
    await client.aclose()


# ---------------------------------------------------------------- administrators


async def test_a_non_admin_gets_404_for_every_users_page_and_action(world):
    runtime, client_for, admin_id, alice_id = world
    client = await client_for("alice")
    assert (await client.http.get("/admin/users")).status_code == 404
    assert (await client.form(f"/admin/users/{admin_id}/disable", {"action": "disable"})).status_code == 404
    assert (await client.form(f"/admin/users/{admin_id}/password", {"new_password": "x" * 12})).status_code == 404
    assert (await _user(runtime, admin_id)).disabled_at is None
    assert "/admin/users" not in (await client.http.get("/campaigns")).text
    visitor = await client_for()
    assert (await visitor.http.get("/admin/users")).status_code == 303   # to the login page


async def test_disabling_a_user_ends_their_sessions_refuses_login_and_stops_dialing(world):
    runtime, client_for, admin_id, alice_id = world
    confirmation = await confirm_plan(runtime.sessions, alice_id, a_plan(), "k")
    alice = await client_for("alice")
    assert (await alice.http.get("/campaigns")).status_code == 200
    admin = await client_for("root")
    listing = (await admin.http.get("/admin/users")).text
    assert 'href="/admin/users"' in listing and "alice" in listing and "root" in listing

    response = await admin.form(f"/admin/users/{alice_id}/disable", {"action": "disable"})
    assert response.status_code == 303
    assert (await alice.http.get("/campaigns")).headers["location"].startswith("/login")
    refused = await _login_form(await client_for(), "alice", PASSWORD)
    assert refused.status_code == 403 and "The account &#39;alice&#39; is disabled" in refused.text
    api = await client_for()
    await api.refresh_csrf()
    api_login = await api.api("POST", "/api/login", json={"username": "alice", "password": PASSWORD})
    assert api_login.status_code == 403 and api_login.json()["error"]["code"] == "account_disabled"
    wrong = await _login_form(await client_for(), "alice", "not the password")
    assert wrong.status_code == 401   # the disabled state is told only to whoever knows the password
    async with runtime.sessions() as session:
        assert await claim_due_tasks(session, claimer="test", limit=10, now=utcnow() + timedelta(days=2)) == []

    await admin.form(f"/admin/users/{alice_id}/disable", {"action": "enable"})
    assert (await _login_form(await client_for(), "alice", PASSWORD)).status_code == 303
    async with runtime.sessions() as session:
        claimed = await claim_due_tasks(session, claimer="test", limit=10, now=utcnow() + timedelta(days=2))
    assert sorted(task.id for task in claimed) == sorted(confirmation.task_ids)


async def test_an_admin_cannot_disable_themselves(world):
    runtime, client_for, admin_id, _ = world
    admin = await client_for("root")
    response = await admin.form(f"/admin/users/{admin_id}/disable", {"action": "disable"})
    assert response.status_code == 400 and "You cannot disable your own account." in response.text
    assert (await _user(runtime, admin_id)).disabled_at is None


async def test_reset_password_shows_a_generated_one_once_or_sets_the_typed_one(world):
    runtime, client_for, admin_id, alice_id = world
    alice = await client_for("alice")
    admin = await client_for("root")
    response = await admin.form(f"/admin/users/{alice_id}/password", {"new_password": ""})
    assert response.status_code == 200
    generated = re.search(r"New password for <b>alice</b>: <code>([^<]+)</code>", response.text).group(1)
    assert len(generated) >= 16 and response.headers["cache-control"] == "no-store"
    assert generated not in (await admin.http.get("/admin/users")).text   # shown once
    assert (await alice.http.get("/campaigns")).status_code == 303          # her session ended
    assert (await _login_form(await client_for(), "alice", PASSWORD)).status_code == 401
    assert (await _login_form(await client_for(), "alice", generated)).status_code == 303

    short = await admin.form(f"/admin/users/{alice_id}/password", {"new_password": "short"})
    assert short.status_code == 400 and "at least 8 characters" in short.text
    typed = await admin.form(f"/admin/users/{alice_id}/password", {"new_password": "chosen by admin"})
    assert "The password of <b>alice</b> is set." in typed.text and "chosen by admin" not in typed.text
    assert (await _login_form(await client_for(), "alice", "chosen by admin")).status_code == 303


async def test_the_api_does_what_the_account_and_users_pages_do(world):
    runtime, client_for, admin_id, alice_id = world
    alice = await client_for("alice")
    assert (await alice.api("GET", "/api/account")).json() == {
        "username": "alice", "time_zone": "UTC", "region": "", "default_region": "", "is_admin": False}
    bad = await alice.api("POST", "/api/account", json={"time_zone": "Nowhere", "region": "ZZ"})
    assert bad.status_code == 400 and len(bad.json()["error"]["details"]) == 2
    ok = await alice.api("POST", "/api/account", json={"time_zone": "Asia/Tokyo", "region": "JP"})
    assert (ok.json()["time_zone"], ok.json()["region"]) == ("Asia/Tokyo", "JP")
    assert (await alice.api("GET", "/api/admin/users")).status_code == 404
    assert (await alice.api("POST", f"/api/admin/users/{admin_id}/disable")).status_code == 404

    admin = await client_for("root")
    users = (await admin.api("GET", "/api/admin/users")).json()["users"]
    assert [u["username"] for u in users] == ["alice", "root"]
    assert (await admin.api("POST", f"/api/admin/users/{admin_id}/disable")).status_code == 400
    assert (await admin.api("POST", f"/api/admin/users/{alice_id}/disable")).json() == {"id": alice_id,
                                                                                       "disabled": True}
    assert (await alice.api("GET", "/api/account")).status_code == 401
    reset = await admin.api("POST", f"/api/admin/users/{alice_id}/password", json={})
    generated = reset.json()["password"]
    assert reset.headers["cache-control"] == "no-store" and len(generated) >= 16
    await admin.api("POST", f"/api/admin/users/{alice_id}/enable")
    assert (await _login_form(await client_for(), "alice", generated)).status_code == 303
    status = (await admin.api("GET", "/api/status")).json()
    assert status["calls_in_progress"] == 0 and status["llm_configured"] is False
    assert [light["name"] for light in status["lights"]] == ["asterisk", "model", "calls"]
