"""Charts: the numbers each chart draws, from calls whose outcomes, days and durations are known; SVG that escapes
its labels and names itself for screen readers; the pages, one tenant's numbers only."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest_asyncio

from db.models import CallOutcome
from db.types import utcnow
from tests.doubles.call_log_seed import seed_campaign, set_call
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from webui import chart_pages, charts
from webui.app import create_app

SVG = "{http://www.w3.org/2000/svg}"
DAY1 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def call(at: datetime, outcome: CallOutcome | None, talked: int | None = None, bridged: bool = False):
    return SimpleNamespace(created_at=at, outcome=outcome, answered_at=at if talked is not None else None,
                           duration_seconds=talked, bridged_to_ai=bridged)


def bars(svg: str) -> list[tuple[str | None, str, float]]:
    root = ET.fromstring(svg.split("<ul")[0])   # the stacked chart's legend is HTML after the SVG
    return [(rect.get("data-series"), rect.get("data-label"), float(rect.get("data-value")))
            for rect in root.iter(f"{SVG}rect") if rect.get("class") == "bar"]


KNOWN = [
    call(DAY1, CallOutcome.ANSWERED, 40, bridged=True),
    call(DAY1 + timedelta(hours=1), CallOutcome.BUSY),
    call(DAY1 + timedelta(hours=2), CallOutcome.VOICEMAIL, 12),
    call(DAY1 + timedelta(days=2), CallOutcome.ANSWERED, 310, bridged=True),
    call(DAY1 + timedelta(days=2, hours=1), CallOutcome.NO_ANSWER),
    call(DAY1 + timedelta(days=2, hours=2), None),            # still ringing
]


def test_outcomes_over_time_count_each_day_and_outcome_with_empty_days_kept():
    days, series = chart_pages.outcomes_by_day(KNOWN, UTC)
    assert days == ["2026-11-20", "2026-11-21", "2026-11-22"]
    assert series == {"answered": [1, 0, 1], "busy": [1, 0, 0], "voicemail": [1, 0, 0], "no_answer": [0, 0, 1],
                      "in progress": [0, 0, 1]}
    drawn = bars(charts.stacked_bar_chart("Outcomes", days, series))
    assert ("answered", "2026-11-22", 1.0) in drawn and ("in progress", "2026-11-22", 1.0) in drawn
    assert len(drawn) == 6   # zero segments are not drawn


def test_answer_rate_durations_and_attempts_from_known_calls():
    assert chart_pages.answer_rate_by_day(KNOWN, UTC) == [("2026-11-20", 66.7), ("2026-11-21", 0.0),
                                                          ("2026-11-22", 50.0)]
    assert chart_pages.duration_histogram(KNOWN) == [("0 s–15 s", 1), ("15 s–30 s", 0), ("30 s–1 min", 1),
                                                     ("1 min–2 min", 0), ("2 min–5 min", 0), ("5 min+", 1)]
    assert chart_pages.attempts_per_task({0: 4, 2: 7, 3: 1}) == [("0", 4), ("1", 0), ("2", 7), ("3", 1)]
    drawn = bars(charts.bar_chart("Rate", chart_pages.answer_rate_by_day(KNOWN, UTC), unit="%"))
    assert [(label, value) for _, label, value in drawn] == [("2026-11-20", 66.7), ("2026-11-21", 0.0),
                                                             ("2026-11-22", 50.0)]


def test_days_are_the_users_days():
    late = [call(datetime(2026, 11, 21, 2, 0, tzinfo=UTC), CallOutcome.BUSY)]   # 21:00 on the 20th in New York
    assert chart_pages.outcomes_by_day(late, ZoneInfo("America/New_York"))[0] == ["2026-11-20"]
    assert chart_pages.outcomes_by_day(late, UTC)[0] == ["2026-11-21"]


def test_calls_and_model_minutes_per_day():
    days = [DAY1.date() + timedelta(days=n) for n in range(3)]
    calls, minutes = chart_pages.per_day(KNOWN, days, UTC)
    assert calls == [("2026-11-20", 3), ("2026-11-21", 0), ("2026-11-22", 3)]
    assert minutes == [("2026-11-20", 0.7), ("2026-11-21", 0.0), ("2026-11-22", 5.2)]   # only the AI's calls


def test_the_svg_escapes_labels_and_names_itself_for_screen_readers():
    svg = str(charts.bar_chart('<script>alert("x")</script> & co', [("<b>", 3), ("ok", 1.5)], unit=" min"))
    assert "<script>" not in svg and "<b>" not in svg and "&lt;script&gt;" in svg
    root = ET.fromstring(svg)
    assert root.get("role") == "img"
    title_id, desc_id = root.get("aria-labelledby").split()
    assert root.find(f"{SVG}title").get("id") == title_id and root.find(f"{SVG}desc").get("id") == desc_id
    assert root.find(f"{SVG}desc").text == "<b>: 3 min; ok: 1.5 min"
    assert [value for _, _, value in bars(svg)] == [3.0, 1.5]
    tallest = max(float(r.get("height")) for r in root.iter(f"{SVG}rect"))
    assert [t.text for t in root.iter(f"{SVG}text")][:3] == ["0 min", "2.5 min", "5 min"]   # axis to a round 5
    assert tallest == (charts.HEIGHT - charts.TOP - charts.BOTTOM) * 3 / 5


def test_a_chart_of_nothing_says_so():
    svg = str(charts.bar_chart("Empty", []))
    assert ET.fromstring(svg).find(f"{SVG}desc").text == "no data"


@pytest_asyncio.fixture
async def alice(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    user_id = await add_user(runtime, "alice")
    client = WebClient(create_app(runtime))
    await client.login("alice")
    yield runtime, client, user_id
    await client.aclose()


async def test_campaign_and_overall_chart_pages_draw_the_users_numbers(alice):
    runtime, client, user_id = alice
    bob = await add_user(runtime, "bob")
    today = utcnow().replace(hour=12, minute=0, second=0, microsecond=0)
    # 10 calls, 12 minutes apart, today: outcomes answered, no_answer, busy, answered, voicemail (x2).
    seeded = await seed_campaign(runtime.sessions, user_id, tasks=5, calls=10, start=today - timedelta(hours=3),
                                 spacing=timedelta(minutes=12), name="<i>Plumbers</i>")
    await seed_campaign(runtime.sessions, bob, tasks=3, calls=7, start=today - timedelta(hours=3))
    await set_call(runtime.sessions, user_id, seeded.call_ids[0], duration_seconds=600)
    page = await client.http.get(f"/campaigns/{seeded.campaign_id}/charts")
    assert page.status_code == 200 and "<i>Plumbers</i>" not in page.text and "&lt;i&gt;Plumbers" in page.text
    svgs = [part.split("</svg>")[0] + "</svg>" for part in page.text.split("<svg class=\"chart\"")[1:]]
    outcomes, rate, attempts, durations = (bars('<svg class="chart"' + svg) for svg in svgs)
    day = (today - timedelta(hours=3)).date().isoformat()
    assert sorted((s, v) for s, _, v in outcomes) == [("answered", 4), ("busy", 2), ("no_answer", 2),
                                                      ("voicemail", 2)]
    assert rate == [(None, day, 60.0)] and "6 of 10 ended calls answered (60 %)" in page.text
    assert [(label, value) for _, label, value in attempts] == [("0", 0), ("1", 0), ("2", 5)]   # 2 calls each
    assert sum(value for *_, value in durations) == 6 and durations[-1][2] == 1   # the 600 s call: "5 min+"
    assert (await client.http.get(f"/campaigns/{seeded.campaign_id + 1}/charts")).status_code == 404   # Bob's

    overall = await client.http.get("/charts")
    svgs = [part.split("</svg>")[0] for part in overall.text.split("<svg class=\"chart\"")[1:]]
    per_day, minutes = (bars('<svg class="chart"' + svg + "</svg>") for svg in svgs)
    assert len(per_day) == chart_pages.OVERALL_DAYS and per_day[-1][1:] == (day, 10.0)
    assert sum(v for *_, v in per_day) == 10            # none of Bob's 7
    # Model minutes: the 6 answered or voicemail calls were bridged; talked 600 + 20+3 + 20+4 + 20+5 + ... s.
    talked = 600 + sum(20 + n for n in (3, 4, 5, 8, 9))
    assert minutes[-1][1:] == (day, round(talked / 60, 1))
    assert f"/campaigns/{seeded.campaign_id}/charts" in overall.text


def test_the_users_zone_is_read_in_one_place():
    from webui.user_time import user_zone
    assert user_zone(SimpleNamespace(state=SimpleNamespace())) is UTC
    new_york = ZoneInfo("America/New_York")
    assert user_zone(SimpleNamespace(state=SimpleNamespace(time_zone=new_york))) is new_york
