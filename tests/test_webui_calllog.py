"""The call log (/calls, /calls.csv) and the campaign page's task pages: one tenant's calls only, each filter,
pages that neither repeat nor skip a call, the CSV of exactly what is filtered (formulas defused), and a
10,000-task campaign shown a page at a time."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest_asyncio

from db import repo
from db.call_log import CallLogFilter, Cursor, call_log_page
from db.models import CallOutcome, TaskStatus
from tests.doubles.call_log_seed import add_line, seed_campaign, set_call
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from webui.app import create_app
from webui.calllog import decode_cursor, encode_cursor, parse_filters
from webui.views import TASKS_PER_PAGE

START = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


@pytest_asyncio.fixture
async def two_tenants(settings_env, engine, sessions):
    """Alice (logged in) and Bob, each with a campaign of calls; Bob's calls say the same words as Alice's."""
    runtime = make_runtime(settings_env, engine, sessions)
    alice = await add_user(runtime, "alice")
    bob = await add_user(runtime, "bob")
    client = WebClient(create_app(runtime))
    await client.login("alice")
    yield runtime, client, alice, bob
    await client.aclose()


def call_ids(page: str) -> list[int]:
    return [int(n) for n in re.findall(r'class="call-row" data-call-id="(\d+)"', page)]


async def test_the_log_shows_only_the_users_calls_newest_first_and_each_filter_narrows_it(two_tenants):
    runtime, client, alice, bob = two_tenants
    # 12 calls an hour apart from 2026-11-20 09:00; outcomes cycle answered, no_answer, busy, answered, voicemail.
    dentists = await seed_campaign(runtime.sessions, alice, tasks=4, calls=12, lines_per_call=2, start=START,
                                   spacing=timedelta(hours=6), name="Dentists")
    garages = await seed_campaign(runtime.sessions, alice, tasks=2, calls=3, lines_per_call=1,
                                  start=START + timedelta(minutes=30), spacing=timedelta(hours=6), name="Garages",
                                  number_prefix="+4930")
    bobs = await seed_campaign(runtime.sessions, bob, tasks=2, calls=5, lines_per_call=2, start=START,
                               name="Bob's", number_prefix="+1415")
    await add_line(runtime.sessions, alice, dentists.call_ids[7], "We could do Thursday at 4%_ pm")
    await add_line(runtime.sessions, bob, bobs.call_ids[0], "We could do Thursday at 4%_ pm")

    page = await client.http.get("/calls")
    assert page.status_code == 200
    everything = call_ids(page.text)
    assert sorted(everything) == sorted(dentists.call_ids + garages.call_ids)   # none of Bob's
    assert everything[:2] == [dentists.call_ids[11], dentists.call_ids[10]]   # newest first
    assert "Bob&#39;s" not in page.text and "Bob's" not in page.text

    async def shown(**params) -> list[int]:
        response = await client.http.get("/calls", params=params)
        assert response.status_code == 200, response.text
        return sorted(call_ids(response.text))

    assert await shown(campaign=garages.campaign_id) == garages.call_ids
    assert await shown(campaign=bobs.campaign_id) == []           # another tenant's campaign id: nothing
    answered = [c for n, c in enumerate(dentists.call_ids) if n % 5 in (0, 3)]
    assert await shown(campaign=dentists.campaign_id, outcome="answered") == answered
    # Dentists' calls at 09:00, 15:00, 21:00, 03:00 (next day) ...: 2026-11-21 holds calls 3..6 (UTC days).
    assert await shown(campaign=dentists.campaign_id, **{"from": "2026-11-21", "to": "2026-11-21"}) == \
        dentists.call_ids[3:7]
    assert await shown(**{"from": "2026-11-23"}) == dentists.call_ids[11:]
    assert await shown(number="+49 30") == garages.call_ids     # digits only: "4930" in the dialed number
    # Words said, case-insensitive; % and _ are letters, not wildcards; Bob's identical line is not found.
    assert await shown(q="thursday AT 4%_") == [dentists.call_ids[7]]
    assert await shown(q="4%x") == []
    # Busy calls are calls 2 and 7; call 2 said WORDS[2] and WORDS[3] ("please call back tomorrow", ...).
    assert await shown(q="PLEASE call back", outcome="busy", campaign=dentists.campaign_id) == \
        [dentists.call_ids[2]]


async def test_a_filter_it_cannot_read_is_named_and_left_out(two_tenants):
    runtime, client, alice, _ = two_tenants
    await seed_campaign(runtime.sessions, alice, tasks=1, calls=2, start=START)
    response = await client.http.get("/calls", params={"from": "21/11/2026", "outcome": "won", "q": "ab",
                                                       "number": "abc"})
    assert response.status_code == 400
    text = response.text
    assert "from: &#39;21/11/2026&#39; is not a date; use YYYY-MM-DD" in text
    assert "outcome: &#39;won&#39; is not one of answered" in text
    assert "type at least 3 characters" in text and "number: &#39;abc&#39; has no digits" in text
    assert len(call_ids(text)) == 2    # the rest of the filter still applies: here, none
    swapped = await client.http.get("/calls", params={"from": "2026-11-22", "to": "2026-11-21"})
    assert swapped.status_code == 400 and "swap them" in swapped.text
    refused = await client.http.get("/calls.csv", params={"from": "yesterday"})
    assert refused.status_code == 400 and "Nothing exported" in refused.text


async def test_pages_follow_a_keyset_every_call_once_even_with_calls_placed_meanwhile(two_tenants):
    runtime, client, alice, _ = two_tenants
    seeded = await seed_campaign(runtime.sessions, alice, tasks=10, calls=120, start=START,
                                 spacing=timedelta(minutes=1))
    seen: list[int] = []
    response = await client.http.get("/calls")
    pages = 0
    while True:
        pages += 1
        seen += call_ids(response.text)
        if pages == 1:   # a newer call placed while the user reads page 1 does not shift the next pages
            await seed_campaign(runtime.sessions, alice, tasks=1, calls=1, start=START + timedelta(days=9))
        found = re.search(r'href="/calls\?([^"]+)" rel="next"', response.text)
        if not found:
            break
        response = await client.http.get("/calls?" + found.group(1).replace("&amp;", "&"))
    assert pages == 3 and seen == sorted(seeded.call_ids, reverse=True)
    assert "Newest calls" in response.text


def test_a_cursor_from_the_address_bar_is_read_or_ignored_never_an_error():
    assert decode_cursor(None) is None
    round_trip = decode_cursor(encode_cursor(Cursor(START, 42)))
    assert round_trip == Cursor(START, 42)
    for junk in ("", "x" * 65, "!!!", "bm90LWEtY3Vyc29y", "OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5LjE"):
        assert decode_cursor(junk) is None


def test_dates_are_the_users_days_converted_in_one_helper():
    from zoneinfo import ZoneInfo
    parsed = parse_filters({"from": "2026-11-21", "to": "2026-11-21"}, ZoneInfo("America/New_York"))
    assert parsed.filters.since == datetime(2026, 11, 21, 5, 0, tzinfo=UTC)
    assert parsed.filters.until == datetime(2026, 11, 22, 5, 0, tzinfo=UTC)
    assert parse_filters({"from": "2026-11-21"}, UTC).filters.until is None


async def test_csv_export_has_every_filtered_call_with_formulas_defused(two_tenants):
    runtime, client, alice, bob = two_tenants
    seeded = await seed_campaign(runtime.sessions, alice, tasks=3, calls=2100, start=START,
                                 spacing=timedelta(seconds=30))
    await seed_campaign(runtime.sessions, bob, tasks=1, calls=3, start=START)
    async with runtime.sessions() as session:
        task = await repo.get_task(session, alice, seeded.task_ids[0])
        task.target_name = "=HYPERLINK(\"http://evil\",\"click\")"
        await session.commit()
    await set_call(runtime.sessions, alice, seeded.call_ids[0], analysis={"outcome": "success",
                                                                          "summary": "@SUM(A1:A9) booked"})
    response = await client.http.get("/calls.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert 'filename="calls.csv"' in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0][:3] == ["call_id", "started_at_utc", "campaign"]
    assert sorted(int(row[0]) for row in rows[1:]) == seeded.call_ids     # all 2,100 (three chunks), none of Bob's
    first = next(row for row in rows[1:] if int(row[0]) == seeded.call_ids[0])
    assert first[3] == "'=HYPERLINK(\"http://evil\",\"click\")" and first[4] == "+14150000000"   # numbers stay
    assert first[8:] == ["success", "20", "'@SUM(A1:A9) booked"]
    busy = await client.http.get("/calls.csv", params={"outcome": "busy"})
    busy_rows = list(csv.reader(io.StringIO(busy.text)))[1:]
    assert len(busy_rows) == 420 and {row[7] for row in busy_rows} == {"busy"}


async def test_the_query_is_tenant_scoped_even_given_another_tenants_campaign(sessions, settings_env, engine):
    runtime = make_runtime(settings_env, engine, sessions)
    alice, bob = await add_user(runtime, "alice"), await add_user(runtime, "bob")
    bobs = await seed_campaign(sessions, bob, tasks=1, calls=3, lines_per_call=1, start=START)
    async with sessions() as session:
        rows, cursor = await call_log_page(session, alice, CallLogFilter(campaign_id=bobs.campaign_id))
        assert (rows, cursor) == ([], None)
        rows, _ = await call_log_page(session, alice, CallLogFilter(outcome=CallOutcome.ANSWERED, text="open"))
        assert rows == []
        rows, _ = await call_log_page(session, bob, CallLogFilter(text="OPEN UNTIL"))
        assert [row.id for row in rows] == [bobs.call_ids[0]]


async def test_a_campaign_of_10000_tasks_is_shown_100_at_a_time(two_tenants):
    runtime, client, alice, _ = two_tenants
    seeded = await seed_campaign(runtime.sessions, alice, tasks=10_000, calls=300, lines_per_call=1, start=START)
    campaign_id = seeded.campaign_id
    first = await client.http.get(f"/campaigns/{campaign_id}")
    assert first.status_code == 200
    rows = re.findall(r'<tr id="task-(\d+)" class="task"', first.text)
    assert [int(n) for n in rows] == seeded.task_ids[:TASKS_PER_PAGE]
    assert "tasks 1–100 of 10000 · page 1 of 100" in first.text
    assert f'href="/campaigns/{campaign_id}?page=2" rel="next"' in first.text
    last = await client.http.get(f"/campaigns/{campaign_id}?page=100")
    assert [int(n) for n in re.findall(r'<tr id="task-(\d+)" class="task"', last.text)] == seeded.task_ids[-100:]
    assert "rel=\"next\"" not in last.text and "tasks 9901–10000 of 10000" in last.text
    beyond = await client.http.get(f"/campaigns/{campaign_id}/tasks?page=999")   # the live fragment, too
    assert "page 100 of 100" in beyond.text and "<html" not in beyond.text
    junk = await client.http.get(f"/campaigns/{campaign_id}?page=-3")
    assert "page 1 of 100" in junk.text
    api = (await client.http.get(f"/api/campaigns/{campaign_id}?page=2")).json()
    assert [t["id"] for t in api["tasks"]] == seeded.task_ids[100:200]
    assert api["page"]["total_tasks"] == 10_000 and api["campaign"]["task_counts"] == {"pending": 10_000}
    # A control on a task of page 57 comes back to page 57, at the task.
    task_id = seeded.task_ids[5_650]
    paused = await client.form(f"/tasks/{task_id}/pause")
    assert paused.headers["location"] == f"/campaigns/{campaign_id}?page=57#task-{task_id}"
    async with runtime.sessions() as session:
        assert (await repo.get_task(session, alice, task_id)).status is TaskStatus.ON_HOLD


async def test_words_with_quotes_backslashes_and_wildcards_are_searched_as_typed(two_tenants):
    runtime, client, alice, _ = two_tenants
    seeded = await seed_campaign(runtime.sessions, alice, tasks=2, calls=4, lines_per_call=1, start=START)
    odd = "It's 100% o'clock \\ here_now; DROP TABLE calls; --"
    await add_line(runtime.sessions, alice, seeded.call_ids[2], odd)
    for typed in (odd, "it's 100% O'CLOCK \\ here_", "; drop table calls; --"):
        response = await client.http.get("/calls", params={"q": typed})
        assert call_ids(response.text) == [seeded.call_ids[2]], typed
    for typed in ("100%%", "here.now", "o''clock"):
        assert call_ids((await client.http.get("/calls", params={"q": typed})).text) == [], typed
    async with runtime.sessions() as session:   # every call is still there
        rows, _ = await call_log_page(session, alice, CallLogFilter())
        assert len(rows) == 4


async def test_the_json_api_pages_the_same_filtered_log(two_tenants):
    runtime, client, alice, bob = two_tenants
    seeded = await seed_campaign(runtime.sessions, alice, tasks=5, calls=60, start=START)
    await seed_campaign(runtime.sessions, bob, tasks=5, calls=60, start=START)
    first = (await client.http.get("/api/calls", params={"outcome": "answered"})).json()
    answered = [c for n, c in enumerate(seeded.call_ids) if n % 5 in (0, 3)]
    assert [c["id"] for c in first["calls"]] == sorted(answered, reverse=True)
    assert len(first["calls"]) == 24 and first["next"] is None
    assert first["calls"][0]["outcome"] == "answered" and first["calls"][0]["started_at"].endswith("+00:00")
    page1 = (await client.http.get("/api/calls")).json()
    page2 = (await client.http.get("/api/calls", params={"after": page1["next"]})).json()
    assert [c["id"] for c in page1["calls"] + page2["calls"]] == sorted(seeded.call_ids, reverse=True)
    assert page2["next"] is None
    bad = await client.http.get("/api/calls", params={"to": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_filter"
    assert bad.json()["error"]["details"] == ["to: 'soon' is not a date; use YYYY-MM-DD, e.g. 2026-12-01"]
