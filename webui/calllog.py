"""The call log page (/calls) and its CSV export (/calls.csv): the user's calls across campaigns, filtered by
campaign, outcome, date (the user's days), number and words said, a page at a time (db/call_log.py)."""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from db import call_log, repo
from db.call_log import CallLogFilter, Cursor
from db.models import CallOutcome
from webui.csv_import import safe_cell
from webui.pages import _render, _runtime
from webui.routing import HttpError, api, page
from webui.user_time import user_zone, utc_range

MAX_TEXT = 200
MIN_TEXT = 3          # shorter words match nearly every call, and a trigram index needs three characters
FILTER_FIELDS = ("campaign", "outcome", "from", "to", "number", "q")
CSV_COLUMNS = ["call_id", "started_at_utc", "campaign", "target", "number", "attempt", "status", "outcome",
               "verdict", "duration_seconds", "summary"]


@dataclass(frozen=True)
class ParsedFilters:
    """The query string as filters, what the form shows back, and what was wrong with it (each field named)."""

    filters: CallLogFilter
    form: dict[str, str]
    errors: list[str]


def _date(value: str, field: str, errors: list[str]) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        errors.append(f"{field}: {value!r} is not a date; use YYYY-MM-DD, e.g. 2026-12-01")
        return None


def parse_filters(params: Mapping[str, str], zone: tzinfo) -> ParsedFilters:
    """The call log's filters from a query string; a bad field is named in `errors` and left out (the rest
    still apply), so a typo never shows calls the user did not ask for without saying so."""
    form = {name: (params.get(name) or "").strip() for name in FILTER_FIELDS}
    errors: list[str] = []
    campaign_id = None
    if form["campaign"]:
        if form["campaign"].isdigit() and len(form["campaign"]) < 10:
            campaign_id = int(form["campaign"])
        else:
            errors.append(f"campaign: {form['campaign']!r} is not a campaign id")
    outcome = None
    if form["outcome"]:
        try:
            outcome = CallOutcome(form["outcome"])
        except ValueError:
            errors.append(f"outcome: {form['outcome']!r} is not one of "
                          f"{', '.join(o.value for o in CallOutcome)}")
    first, last = _date(form["from"], "from", errors), _date(form["to"], "to", errors)
    if first and last and first > last:
        errors.append(f"dates: 'from' ({first}) is after 'to' ({last}); swap them")
        first = last = None
    since, until = utc_range(first, last, zone)
    digits = "".join(ch for ch in form["number"] if ch.isdigit())
    if form["number"] and not digits:
        errors.append(f"number: {form['number']!r} has no digits; type part of the number, e.g. 555")
    text = form["q"]
    if text and len(text) < MIN_TEXT:
        errors.append(f"words said: type at least {MIN_TEXT} characters to search the transcripts")
        text = ""
    elif len(text) > MAX_TEXT:
        errors.append(f"words said: at most {MAX_TEXT} characters are searched; the rest is left out")
        text = text[:MAX_TEXT]
    return ParsedFilters(CallLogFilter(campaign_id, outcome, since, until, digits[:20], text), form, errors)


def encode_cursor(cursor: Cursor) -> str:
    """The `?after=` value of a cursor: opaque to the user, read back by `decode_cursor`."""
    micros = (cursor.created_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(f"{micros}.{cursor.call_id}".encode()).decode().rstrip("=")


def decode_cursor(value: str | None) -> Cursor | None:
    """A `?after=` value back to a cursor; anything unreadable is the first page."""
    if not value or len(value) > 64:
        return None
    try:
        micros, _, call_id = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode().partition(".")
        return Cursor(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(micros)), int(call_id))
    except (ValueError, UnicodeDecodeError, OverflowError):
        return None


def row_dict(row: Any) -> dict[str, Any]:
    """A call log row as the page, the CSV and the API show it."""
    analysis = row.analysis if isinstance(row.analysis, dict) else {}
    return {
        "id": row.id, "started_at": row.started_at or row.created_at, "campaign_id": row.campaign_id,
        "campaign_name": row.campaign_name, "task_id": row.task_id, "target_name": row.target_name,
        "number": row.dialed_number, "attempt": row.attempt_number, "status": row.status.value,
        "outcome": row.outcome.value if row.outcome else None, "verdict": str(analysis.get("outcome") or ""),
        "summary": str(analysis.get("summary") or ""), "duration_seconds": row.duration_seconds,
    }


def _query_string(form: dict[str, str], **extra: str) -> str:
    return urlencode({**{k: v for k, v in form.items() if v}, **extra})


async def call_log_page(request: Request) -> Response:
    """GET /calls: the filter form, one page of calls, a link to the next page and to the CSV of the filter."""
    user_id = request.state.user_id
    zone = user_zone(request)
    parsed = parse_filters(request.query_params, zone)
    async with _runtime(request).sessions() as session:
        campaigns = await repo.list_campaigns(session, user_id)
        rows, cursor = await call_log.call_log_page(session, user_id, parsed.filters,
                                                    decode_cursor(request.query_params.get("after")))
    return _render(request, "calllog.html", {
        "calls": [row_dict(row) for row in rows], "form": parsed.form, "errors": parsed.errors,
        "campaigns": [{"id": c.id, "name": c.name} for c in campaigns], "outcomes": [o.value for o in CallOutcome],
        "next_query": _query_string(parsed.form, after=encode_cursor(cursor)) if cursor else None,
        "first_query": _query_string(parsed.form), "is_first": not request.query_params.get("after"),
        "csv_query": _query_string(parsed.form), "zone_name": str(zone)}, status_code=400 if parsed.errors else 200)


def csv_line(values: list[Any]) -> str:
    """One CSV line, every cell through `safe_cell`."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(
        [safe_cell("" if value is None else str(value)) for value in values])
    return out.getvalue()


def csv_values(call: dict[str, Any]) -> list[Any]:
    """A call's cells, in CSV_COLUMNS order."""
    return [call["id"], call["started_at"].isoformat(), call["campaign_name"], call["target_name"], call["number"],
            call["attempt"], call["status"], call["outcome"], call["verdict"], call["duration_seconds"],
            call["summary"]]


async def call_log_csv(request: Request) -> Response:
    """GET /calls.csv: every call the same filters show, as CSV (formulas defused), streamed in chunks."""
    user_id = request.state.user_id
    parsed = parse_filters(request.query_params, user_zone(request))
    if parsed.errors:
        return Response("\n".join(["Nothing exported; fix the filter:", *parsed.errors]) + "\n", status_code=400,
                        media_type="text/plain; charset=utf-8")
    sessions = _runtime(request).sessions

    async def lines() -> AsyncIterator[str]:
        # A session per chunk: a slow download holds no database connection while the client reads.
        yield csv_line(CSV_COLUMNS)
        cursor: Cursor | None = None
        while True:
            async with sessions() as session:
                rows, cursor = await call_log.call_log_page(session, user_id, parsed.filters, cursor,
                                                            limit=call_log.EXPORT_CHUNK)
            yield "".join(csv_line(csv_values(row_dict(row))) for row in rows)
            if cursor is None:
                return

    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8",
                             headers={"content-disposition": 'attachment; filename="calls.csv"'})


async def call_log_api(request: Request) -> Response:
    """GET /api/calls: the same filters and pages as /calls, as JSON: {"calls": [...], "next": "<after>" | null}.
    A filter it cannot read is a 400 `invalid_filter` listing each problem."""
    user_id = request.state.user_id
    parsed = parse_filters(request.query_params, user_zone(request))
    if parsed.errors:
        raise HttpError(400, "invalid_filter", "; ".join(parsed.errors), details=parsed.errors)
    async with _runtime(request).sessions() as session:
        rows, cursor = await call_log.call_log_page(session, user_id, parsed.filters,
                                                    decode_cursor(request.query_params.get("after")))
    calls = [{**call, "started_at": call["started_at"].isoformat()} for call in map(row_dict, rows)]
    return JSONResponse({"calls": calls, "next": encode_cursor(cursor) if cursor else None})


def routes() -> list[Route]:
    """The call log's pages and API route, for `create_app`."""
    return [page("/calls", call_log_page), page("/calls.csv", call_log_csv), api("/api/calls", call_log_api)]
