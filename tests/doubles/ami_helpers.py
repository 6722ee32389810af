"""Helpers for the AMI / scheduler tests: a tenant with a campaign and tasks, settings pointed at a FakeAmi,
and a time that is inside the callee's calling window."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, time, timedelta

from db import repo
from opendeep.phone import callee_timezone
from opendeep.settings import CallingWindow, Settings

ALL_DAY = CallingWindow(time(0, 0), time(23, 59, 59, 999999))


def ami_settings(settings: Settings, port: int, **changes) -> Settings:
    """The test Settings pointed at a FakeAmi on `port`, reconnecting fast."""
    values = {"ami_host": "127.0.0.1", "ami_port": port, "ami_username": "opendeep", "ami_secret": "secret",
              "ami_reconnect_max_seconds": 0.1, "retry_jitter": 0.0}
    values.update(changes)
    return dataclasses.replace(settings, **values)


def local_noon_after(number: str, after: datetime | None = None) -> datetime:
    """The next 12:00 in the callee's zone (UTC datetime): inside the default 09:00-20:00 window."""
    after = after or datetime.now(UTC)
    zone = callee_timezone(number)
    local = after.astimezone(zone)
    noon = datetime.combine(local.date(), time(12, 0), tzinfo=zone)
    if noon.astimezone(UTC) < after:
        noon = datetime.combine(local.date() + timedelta(days=1), time(12, 0), tzinfo=zone)
    return noon.astimezone(UTC)


async def make_tenant(sessions, username: str = "alice", *, numbers: list[str], max_attempts: int = 3,
                      window: tuple[str, str] | None = None, next_action_time: datetime | None = None):
    """A user, one active campaign, one task per number. Returns (user_id, campaign_id, [task ids])."""
    async with sessions() as session:
        user = await repo.create_user(session, username, "x")
        campaign = await repo.create_campaign(session, user.id, name=f"{username}'s campaign",
                                              window_start=window[0] if window else None,
                                              window_end=window[1] if window else None)
        task_ids = []
        for index, number in enumerate(numbers):
            task = await repo.add_task(session, user.id, campaign.id, target_name=f"callee {index}",
                                       phone_number=number, max_attempts=max_attempts,
                                       next_action_time=next_action_time)
            task_ids.append(task.id)
        await session.commit()
        return user.id, campaign.id, task_ids


async def eventually(predicate, timeout: float = 5.0, interval: float = 0.02, *, what: str = "condition"):
    """Await until `predicate()` (sync or async) is truthy and return its value; fail with a clear message
    (`what` was awaited) after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
