"""Chart pages: per campaign (/campaigns/{id}/charts) outcomes over time, answer rate, attempts per task and call
durations; overall (/charts) calls per day and model minutes. The numbers are grouped here (pure functions, by
the user's days: webui.user_time) and drawn by webui.charts."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, timedelta, tzinfo
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from db import call_stats, repo
from db.types import utcnow
from webui import charts
from webui.pages import _render, _runtime
from webui.routing import not_found, page
from webui.user_time import local_day, local_day_start, user_zone

OVERALL_DAYS = 30
NOT_ENDED = "in progress"
# Call durations (seconds talked after the answer): [low, high) buckets, the last open-ended.
DURATION_BUCKETS = ((0, 15), (15, 30), (30, 60), (60, 120), (120, 300), (300, None))


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def outcomes_by_day(calls: Iterable[Any], zone: tzinfo) -> tuple[list[str], dict[str, list[int]]]:
    """Calls per user-day and outcome: (days from the first call's to the last's, {outcome: count per day}),
    the outcomes most frequent first; a call not yet ended counts as "in progress"."""
    counts: dict[date, Counter] = defaultdict(Counter)
    for call in calls:
        counts[local_day(call.created_at, zone)][call.outcome.value if call.outcome else NOT_ENDED] += 1
    if not counts:
        return [], {}
    days = _days(min(counts), max(counts))
    totals: Counter[str] = Counter()
    for day_counts in counts.values():
        totals.update(day_counts)
    return [d.isoformat() for d in days], {outcome: [counts[d][outcome] for d in days]
                                           for outcome, _ in totals.most_common()}


def answer_rate_by_day(calls: Iterable[Any], zone: tzinfo) -> list[tuple[str, float]]:
    """Per user-day, the percentage of ended calls that were answered (by a person or a machine)."""
    ended: Counter = Counter()
    answered: Counter = Counter()
    for call in calls:
        if call.outcome is None:
            continue
        day = local_day(call.created_at, zone)
        ended[day] += 1
        answered[day] += call.answered_at is not None
    if not ended:
        return []
    return [(d.isoformat(), round(100 * answered[d] / ended[d], 1) if ended[d] else 0.0)
            for d in _days(min(ended), max(ended))]


def duration_histogram(calls: Iterable[Any]) -> list[tuple[str, int]]:
    """Answered calls per talk-time bucket ("0–15 s", ..., "5 min+")."""
    counts: Counter[tuple[int, int | None]] = Counter()
    for call in calls:
        if call.answered_at is None or call.duration_seconds is None:
            continue
        for low, high in DURATION_BUCKETS:
            if high is None or call.duration_seconds < high:
                counts[(low, high)] += 1
                break
    return [(_bucket_label(low, high), counts[(low, high)]) for low, high in DURATION_BUCKETS]


def _bucket_label(low: int, high: int | None) -> str:
    def text(seconds: int) -> str:
        return f"{seconds // 60} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds} s"
    return f"{text(low)}+" if high is None else f"{text(low)}–{text(high)}"


def attempts_per_task(attempts: dict[int, int]) -> list[tuple[str, int]]:
    """Tasks by the number of calls they took, from 0 to the most any took."""
    if not attempts:
        return []
    return [(str(n), attempts.get(n, 0)) for n in range(max(attempts) + 1)]


def per_day(calls: Iterable[Any], days: Sequence[date], zone: tzinfo) -> tuple[list[tuple[str, int]],
                                                                               list[tuple[str, float]]]:
    """(calls per day, model minutes per day) over `days`: model minutes are the talk time of the calls the call
    AI was bridged to, in minutes to one decimal."""
    calls_count: Counter = Counter()
    seconds: Counter = Counter()
    for call in calls:
        day = local_day(call.created_at, zone)
        calls_count[day] += 1
        if call.bridged_to_ai and call.duration_seconds:
            seconds[day] += call.duration_seconds
    return ([(d.isoformat(), calls_count[d]) for d in days],
            [(d.isoformat(), round(seconds[d] / 60, 1)) for d in days])


async def campaign_charts(request: Request) -> Response:
    """GET /campaigns/{id}/charts: outcomes over time, answer rate, attempts per task, call durations."""
    user_id = request.state.user_id
    campaign_id = int(request.path_params["campaign_id"])
    zone = user_zone(request)
    async with _runtime(request).sessions() as session:
        campaign = await repo.get_campaign(session, user_id, campaign_id)
        if campaign is None:
            raise not_found("campaign")
        calls = await call_stats.campaign_calls(session, user_id, campaign_id)
        attempts = await call_stats.campaign_attempts(session, user_id, campaign_id)
    days, outcomes = outcomes_by_day(calls, zone)
    rates = answer_rate_by_day(calls, zone)
    ended = sum(1 for call in calls if call.outcome is not None)
    answered = sum(1 for call in calls if call.outcome is not None and call.answered_at is not None)
    figures = [
        ("Outcomes over time", "Calls per day, by how they ended.",
         charts.stacked_bar_chart("Calls per day by outcome", days, outcomes) if days else None),
        ("Answer rate", f"{answered} of {ended} ended calls answered"
         + (f" ({100 * answered / ended:.0f} %)" if ended else "") + " — by a person or a machine.",
         charts.bar_chart("Answer rate per day", rates, unit="%") if rates else None),
        ("Attempts per task", "How many calls each task took so far.",
         charts.bar_chart("Tasks by number of attempts", attempts_per_task(attempts)) if attempts else None),
        ("Call durations", "Answered calls by time talked.",
         charts.bar_chart("Answered calls by duration", duration_histogram(calls)) if answered else None),
    ]
    return _render(request, "charts.html", {"title": f"{campaign.name}: charts", "campaign": campaign,
                                            "figures": figures})


async def overall_charts(request: Request) -> Response:
    """GET /charts: the user's calls per day and model minutes over the last OVERALL_DAYS days."""
    user_id = request.state.user_id
    zone = user_zone(request)
    today = local_day(utcnow(), zone)
    days = _days(today - timedelta(days=OVERALL_DAYS - 1), today)
    async with _runtime(request).sessions() as session:
        calls = await call_stats.calls_since(session, user_id, local_day_start(days[0], zone))
        campaigns = await repo.list_campaigns(session, user_id)
    calls_per_day, minutes_per_day = per_day(calls, days, zone)
    total_minutes = sum(minutes for _, minutes in minutes_per_day)
    figures = [
        ("Calls per day", f"{len(calls)} calls in the last {OVERALL_DAYS} days.",
         charts.bar_chart(f"Calls per day, last {OVERALL_DAYS} days", calls_per_day)),
        ("Model minutes", f"{total_minutes:.1f} minutes with the call AI on the line in the last {OVERALL_DAYS} "
                          "days.",
         charts.bar_chart(f"Model minutes per day, last {OVERALL_DAYS} days", minutes_per_day, unit=" min")),
    ]
    return _render(request, "charts.html", {"title": "Charts", "campaign": None, "figures": figures,
                                            "campaigns": campaigns})


def routes() -> list[Route]:
    """The chart pages, for `create_app`."""
    return [page("/charts", overall_charts), page("/campaigns/{campaign_id:int}/charts", campaign_charts)]
