"""Column types that behave the same on SQLite and PostgreSQL.

`UTCDateTime` is why a task can never be "never due": SQLite has no date type, and SQLAlchemy's default stores
text that compares as text (a naive "2026-01-01 10:00:00" sorts after an aware "2026-01-01T09:00:00+00:00").
We store whole microseconds since the epoch on SQLite (numbers compare as numbers) and `timestamptz` on
PostgreSQL, and refuse naive datetimes at the boundary instead of guessing their zone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class NaiveDatetimeError(ValueError):
    """A datetime without tzinfo reached the database layer."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect):
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise NaiveDatetimeError(f"naive datetime {value.isoformat()} given to the database; attach a tzinfo")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return (value - EPOCH) // timedelta(microseconds=1)
        return value

    def process_result_value(self, value, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return EPOCH + timedelta(microseconds=int(value))
        if value.tzinfo is None:  # pragma: no cover - timestamptz always has one
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
