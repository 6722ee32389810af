"""Retry timing: exponential backoff with jitter."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from db.types import utcnow
from opendeep.settings import Settings


def retry_delay_seconds(attempt_count: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Delay before the next attempt after `attempt_count` attempts: base * 2**(n-1), capped, +/- jitter."""
    uniform = rng.uniform if rng is not None else random.uniform
    base = settings.retry_backoff_base_seconds * (2 ** max(attempt_count - 1, 0))
    delay = min(base, settings.retry_backoff_max_seconds)
    if settings.retry_jitter:
        delay *= 1 + uniform(-settings.retry_jitter, settings.retry_jitter)
    return max(delay, 0.0)


def next_retry_time(attempt_count: int, settings: Settings, now: datetime | None = None,
                    rng: random.Random | None = None) -> datetime:
    return (now or utcnow()) + timedelta(seconds=retry_delay_seconds(attempt_count, settings, rng))
