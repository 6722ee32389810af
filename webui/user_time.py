"""The one place where a user's local dates meet the UTC times stored in the database.

Pages take dates from people ("calls from 2026-12-01 to 2026-12-02") and show days ("calls per day"); both mean
the user's days. Until users have a time zone of their own, `user_zone` is UTC; when they do, only it changes.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any


def user_zone(request: Any) -> tzinfo:
    """The zone the request's user reads dates in: `request.state.time_zone` where the app has set one (per-user
    zones are coming), else UTC."""
    zone = getattr(request.state, "time_zone", None)
    return zone if isinstance(zone, tzinfo) else UTC


def local_day_start(day: date, zone: tzinfo) -> datetime:
    """The UTC instant the user's `day` starts (midnight in `zone`)."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def utc_range(first_day: date | None, last_day: date | None, zone: tzinfo) -> tuple[datetime | None, datetime | None]:
    """[start, end) in UTC covering the user's days `first_day` .. `last_day`, both included; None = open."""
    start = local_day_start(first_day, zone) if first_day else None
    end = local_day_start(last_day + timedelta(days=1), zone) if last_day else None
    return start, end


def local_day(moment: datetime, zone: tzinfo) -> date:
    """The user's calendar day of a stored (UTC) instant."""
    return moment.astimezone(zone).date()
