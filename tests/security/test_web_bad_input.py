"""Input that used to crash the web app with a 500: ids too large for the database, JSON nested too deeply, and
flash messages that grew the session cookie past what browsers keep.

Before: /campaigns/9223372036854775808 gave 500 (OverflowError; on PostgreSQL anything above 2^31 - 1 did), a
JSON body of 200,000 `[` gave 500 (RecursionError), and 12 bad 3 KB CSV lines gave a 41,729-byte Set-Cookie
(browsers drop a cookie over 4 KB, and with it the login).
"""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.doubles.webui_client import WebClient, add_user, make_runtime
from webui.app import SESSION_COOKIE, create_app

TOO_LARGE = [2**31, 2**63, 2**64 + 1]
COOKIE_LIMIT = 4096


@pytest_asyncio.fixture
async def alice(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    await add_user(runtime, "alice")
    client = WebClient(create_app(runtime))
    await client.login("alice")
    yield client
    await client.aclose()


@pytest.mark.parametrize("number", TOO_LARGE)
async def test_ids_too_large_for_the_database_are_not_found_on_pages_and_api(alice, number):
    for path in (f"/chat/{number}", f"/campaigns/{number}", f"/campaigns/{number}/tasks",
                 f"/campaigns/{number}/summary", f"/calls/{number}"):
        response = await alice.http.get(path)
        assert response.status_code == 404, (path, response.status_code)
    for path in (f"/tasks/{number}/pause", f"/campaigns/{number}/pause", f"/feedback/{number}/answer"):
        response = await alice.form(path, {"answer": "yes"})
        assert response.status_code == 404, (path, response.status_code)
    for path in (f"/api/chats/{number}", f"/api/campaigns/{number}", f"/api/tasks/{number}",
                 f"/api/calls/{number}", f"/api/campaigns/{number}/summary"):
        response = await alice.http.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", path
    for path in (f"/api/tasks/{number}/cancel", f"/api/feedback/{number}/answer"):
        response = await alice.api("POST", path, {"answer": "yes"})
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", path
    after = await alice.http.get(f"/api/notifications?after={number}")
    assert after.status_code == 400 and after.json()["error"]["code"] == "invalid_field"


async def test_json_nested_two_hundred_thousand_deep_is_a_bad_request(alice):
    deep = "[" * 200_000
    for path in ("/api/login", "/api/plans/validate", "/api/chats/1/messages", "/api/dnd"):
        response = await alice.api("POST", path, content=deep, headers={"content-type": "application/json"})
        assert response.status_code == 400, (path, response.status_code)
        assert response.json()["error"]["code"] == "invalid_json"
    nested_objects = '{"a":' * 100_000
    response = await alice.api("POST", "/api/plans/validate", content=nested_objects,
                               headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def session_cookie_sizes(response) -> list[int]:
    """Sizes of the session cookie this answer sets (none when the session did not change)."""
    return [len(value.split(";")[0]) for name, value in response.headers.multi_items()
            if name == "set-cookie" and value.startswith(f"{SESSION_COOKIE}=")]


@pytest.mark.parametrize("filler", ["9" * 3000, "☎" * 3000, "😀" * 3000])
async def test_flash_messages_keep_the_session_cookie_under_4_kb(alice, filler):
    bad_csv = "phone_number,reason\n" + "".join(f"{filler},bad line {n}\n" for n in range(12))
    imported = await alice.form("/dnd/import", files={"file": ("dnd.csv", bad_csv.encode(), "text/csv")})
    assert imported.status_code == 303
    assert 0 < max(session_cookie_sizes(imported)) < COOKIE_LIMIT
    page = await alice.http.get("/dnd")
    assert "Nothing was imported" in page.text   # the first message, the one that matters, is kept

    # Flashes piling up without a page view in between stay bounded too.
    sizes = []
    for _ in range(30):
        sizes += session_cookie_sizes(await alice.form("/dnd", {"phone_number": filler}))
    assert sizes and max(sizes) < COOKIE_LIMIT
    assert (await alice.http.get("/campaigns")).status_code == 200   # the cookie still holds the session
