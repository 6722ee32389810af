"""Times for people: stored in UTC everywhere, shown in the user's time zone (set from the browser at first
login, editable on the account page); the callee's local time is added where it matters."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

WHEN_FORMATS = {"minutes": "%Y-%m-%d %H:%M %Z", "seconds": "%Y-%m-%d %H:%M:%S %Z", "date": "%Y-%m-%d",
                "time": "%H:%M:%S"}
UTC_ZONE = ZoneInfo("UTC")


@functools.cache
def zone_names() -> tuple[str, ...]:
    """Every IANA zone name this machine knows, sorted (the account page's choices)."""
    return tuple(sorted(name for name in available_timezones() if "/" in name or name == "UTC"))


def valid_zone(name: str | None) -> str | None:
    """`name` if it is an IANA zone we know (e.g. "America/New_York"), else None. Browsers send these."""
    name = (name or "").strip()
    if not name or len(name) > 64 or name not in zone_names():
        return None
    return name


def user_zone(name: str | None) -> ZoneInfo:
    """The zone to show a user's times in; UTC when they have none (or an unknown one)."""
    try:
        zone = valid_zone(name)
        return ZoneInfo(zone) if zone else UTC_ZONE
    except ZoneInfoNotFoundError:  # pragma: no cover - valid_zone checked it
        return UTC_ZONE


def format_when(value: datetime | str | None, precision: str = "minutes", zone: ZoneInfo = UTC_ZONE) -> str:
    """A UTC time (a datetime, or the ISO string a loader returns) in `zone`, for people."""
    if value in (None, ""):
        return "—"
    if isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            return text   # not a time after all (a model's free text): show it as it is
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(zone).strftime(WHEN_FORMATS[precision])
