"""Transfer targets through HTTP: a user lists the people the call AI may hand callees to (page and JSON API);
numbers are validated, names are unique per user, and another tenant can neither see nor remove them."""

from __future__ import annotations

import pytest_asyncio

from tests.doubles.webui_client import WebClient, add_user, make_runtime
from webui.app import create_app


@pytest_asyncio.fixture
async def clients(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    await add_user(runtime, "alice")
    await add_user(runtime, "bob")
    app = create_app(runtime)
    alice, bob = WebClient(app), WebClient(app)
    await alice.login("alice")
    await bob.login("bob")
    yield alice, bob
    await alice.aclose()
    await bob.aclose()


async def test_the_api_adds_lists_and_removes_targets_of_the_user_only(clients):
    alice, bob = clients
    added = await alice.api("POST", "/api/transfer-targets", json={"name": "Front desk",
                                                                    "phone_number": "+1 (415) 555-0106"})
    assert added.status_code == 201, added.text
    assert (added.json()["name"], added.json()["phone_number"]) == ("Front desk", "+14155550106")
    assert (await alice.api("POST", "/api/transfer-targets", json={"name": "front desk",
                                                                    "phone_number": "+14155550107"})).status_code == 409
    bad = await alice.api("POST", "/api/transfer-targets", json={"name": "Boss", "phone_number": "call me"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_phone_number"
    newline = await alice.api("POST", "/api/transfer-targets", json={"name": "a\nb", "phone_number": "+14155550108"})
    assert newline.status_code == 400
    assert [t["name"] for t in (await alice.api("GET", "/api/transfer-targets")).json()["targets"]] == ["Front desk"]
    # Bob sees none of it and cannot remove it.
    assert (await bob.api("GET", "/api/transfer-targets")).json() == {"targets": []}
    target_id = added.json()["id"]
    assert (await bob.api("DELETE", f"/api/transfer-targets/{target_id}")).status_code == 404
    assert (await bob.form(f"/transfer-targets/{target_id}/remove")).status_code == 404
    assert (await alice.api("DELETE", f"/api/transfer-targets/{target_id}")).status_code == 204
    assert (await alice.api("GET", "/api/transfer-targets")).json() == {"targets": []}


async def test_the_page_adds_and_shows_targets_with_csrf(clients):
    alice, _ = clients
    without_token = await alice.http.post("/transfer-targets", data={"name": "Desk", "phone_number": "+14155550106"})
    assert without_token.status_code == 403
    added = await alice.form("/transfer-targets", {"name": "Desk <b>", "phone_number": "+14155550106"})
    assert added.status_code == 303
    page = await alice.http.get("/transfer-targets")
    assert page.status_code == 200 and "+14155550106" in page.text
    assert "Desk &lt;b&gt;" in page.text and "Desk <b>" not in page.text
