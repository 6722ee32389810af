"""kill -9 of `opendeep serve` in the middle of a call, then a restart on the same database.

Two ways the truth comes back after a crash, and neither may dial anybody twice:
- Asterisk went away too (no AMI to ask): the lifecycle manager ends the open call - but only once no real call
  could still be on the line (ORIGINATE_TIMEOUT_SECONDS + MAX_CALL_SECONDS + 60 s after it was placed) - and the
  task is dialed again after that, exactly once.
- Asterisk is still there: the AMI re-sync after the new login (CoreShowChannels) keeps a call that is still up
  (it ends later by its own Hangup, never redialed) and settles one that ended while nobody was listening.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import httpx
from sqlalchemy import select, update

from db import repo
from db.engine import session_factory
from db.models import Call, CallOutcome, CallStatus, Task, TaskStatus
from db.types import utcnow
from tests.doubles.aftercall_seed import verdict
from tests.doubles.ami_helpers import eventually
from tests.doubles.fake_ami import FakeAmi, pairs_get
from tests.doubles.fake_openai import FakeOpenAI
from tests.doubles.reliability_serve import (
    AMI_SECRET,
    CrashableServe,
    answer_as_analyzer,
    seed_campaign,
    window_open_now,
)

ONLY = "fastagi,audiosocket,ami,aftercall,web"   # web: /healthz counts the passes
# Small on purpose: the lifecycle manager ends an open call ORIGINATE_TIMEOUT + MAX_CALL + 60 s = 75 s after it
# was placed, and not one second earlier.
CRASH_ENV = {"ORIGINATE_TIMEOUT_SECONDS": "5", "MAX_CALL_SECONDS": "10", "STUCK_TASK_SECONDS": "1",
             "LIFECYCLE_INTERVAL_SECONDS": "0.3", "SCHEDULER_POLL_SECONDS": "0.2", "AMI_RECONNECT_MAX_SECONDS": "0.5",
             "RETRY_BACKOFF_BASE_SECONDS": "0", "MAX_CONCURRENT_CALLS": "4", "MAX_CONCURRENT_CALLS_PER_USER": "4"}
OPEN_CALL_LIMIT = timedelta(seconds=5 + 10 + 60)


def dialed(fake: FakeAmi) -> Counter[str]:
    """Originates per number, as Asterisk received them."""
    return Counter((pairs_get(action, "Channel") or "").split("@")[0].removeprefix("Local/")
                   for action in fake.actions_named("Originate"))


async def passes_run(app: CrashableServe, *, lifecycle: int = 0, scheduler: int = 0) -> None:
    """Wait until the running process has finished this many more lifecycle / scheduler passes (as /healthz
    counts them): a check that nothing happened then holds however slow the machine is."""
    async def counts() -> tuple[int, int] | None:
        try:
            async with httpx.AsyncClient(base_url=app.web_url, timeout=10) as client:
                components = (await client.get("/healthz")).json()["components"]
        except httpx.TransportError:   # the web port is not listening yet
            return None
        return components["aftercall"]["lifecycle_passes"], components["ami"]["scheduler_passes"]

    start = await eventually(counts, timeout=30, what="/healthz")
    async def enough() -> bool:
        now = await counts()
        return now is not None and now[0] >= start[0] + lifecycle and now[1] >= start[1] + scheduler
    await eventually(enough, timeout=60, interval=0.1, what=f"{lifecycle} lifecycle and {scheduler} scheduler passes")


async def calls_of(sessions, task_id: int) -> list[Call]:
    async with sessions() as session:
        return list((await session.scalars(select(Call).where(Call.task_id == task_id).order_by(Call.id))).all())


async def task_status(sessions, task_id: int) -> TaskStatus:
    async with sessions() as session:
        return (await session.get(Task, task_id)).status


async def ended_by(sessions, user_id: int, call_id: int) -> str | None:
    """The `source` of the call's call.ended event: who decided it was over."""
    async with sessions() as session:
        events = await repo.list_call_events(session, user_id, call_id)
    return next((e.payload.get("source") for e in events if e.type == "call.ended"), None)


class Stack:
    """The app, a fake Asterisk AMI and a fake model, on an emptied database (the `engine` fixture: SQLite and
    PostgreSQL, where a killed process's connections and locks die with it); everything torn down in `close`."""

    def __init__(self, tmp_path, engine, numbers: list[str]) -> None:
        self.database_url = engine.url.render_as_string(hide_password=False)
        self.numbers = numbers
        self.fake = FakeAmi(username="opendeep", secret=AMI_SECRET, hold_seconds=600)   # calls stay up
        self.model = FakeOpenAI()
        self.model.responder = answer_as_analyzer
        self.app = CrashableServe(tmp_path, database_url=self.database_url, only=ONLY)
        self.sessions = session_factory(engine)

    async def start(self) -> tuple[int, list[int]]:
        self.ami_port = await self.fake.start()
        await self.model.start()
        self.app.env.update(AMI_PORT=str(self.ami_port), OPENAI_BASE_URL=self.model.base_url,
                            DEFAULT_CALLING_WINDOW=window_open_now(self.numbers[0]), **CRASH_ENV)
        await self.app.cli("db", "upgrade")
        user_id, _, task_ids = await seed_campaign(self.database_url, self.numbers)
        await self.app.start()
        return user_id, task_ids

    async def wait_answered(self, count: int) -> list[Call]:
        async def answered():
            async with self.sessions() as session:
                rows = (await session.scalars(select(Call).where(Call.status == CallStatus.ANSWERED))).all()
                return rows if len(rows) == count else None
        return await eventually(answered, timeout=30, interval=0.1)

    async def close(self) -> None:
        self.app.kill()
        await self.fake.stop()
        await self.model.stop()


async def test_killed_mid_call_with_asterisk_gone_the_lifecycle_recovers_and_redials_once(tmp_path, engine):
    number = "+14155550400"
    stack = Stack(tmp_path, engine, [number])
    analyses = []

    def analyzer(body):  # the call cut off by the crash did not get there; the next one does
        analyses.append(body)
        if body["response_format"]["json_schema"]["name"] == "call_analysis" and len(analyses) == 1:
            return {"content": verdict("retry", should_retry=True, summary="Cut off mid-sentence.")}
        return answer_as_analyzer(body)
    stack.model.responder = analyzer
    try:
        user_id, (task_id,) = await stack.start()
        (first,) = await stack.wait_answered(1)

        # kill -9 mid-call, and Asterisk goes down with it: nobody can say whether the call is still up.
        await stack.app.kill9()
        await stack.fake.stop()
        await stack.app.start()
        await passes_run(stack.app, lifecycle=5)   # AMI retrying in the background
        (call,) = await calls_of(stack.sessions, task_id)
        assert call.status is CallStatus.ANSWERED       # too young to be sure it is over: left alone
        assert await task_status(stack.sessions, task_id) is TaskStatus.IN_PROGRESS
        assert "open calls are recovered after 75s" in stack.app.log_text()

        # Time passes (the crash was long ago): the call is now older than any real call can last.
        long_ago = utcnow() - OPEN_CALL_LIMIT - timedelta(seconds=30)
        async with stack.sessions() as session, session.begin():
            await session.execute(update(Call).where(Call.id == first.id).values(created_at=long_ago))
            await session.execute(update(Task).where(Task.id == task_id)
                                  .values(claimed_at=long_ago, updated_at=long_ago))
        await eventually(lambda: ended_by(stack.sessions, user_id, first.id), timeout=10, interval=0.1)
        assert await ended_by(stack.sessions, user_id, first.id) == "lifecycle: recovered after restart"
        await eventually(lambda: _status_is(stack.sessions, task_id, TaskStatus.RETRY_SCHEDULED), timeout=15)
        assert dialed(stack.fake) == Counter({number: 1})   # recovered, but Asterisk is still down

        # Asterisk is back: the task is dialed again - once - and this time the call ends normally.
        recovered_at = utcnow()
        await stack.fake.start(port=stack.ami_port)
        stack.fake.hold_seconds = 0.3
        await eventually(lambda: _status_is(stack.sessions, task_id, TaskStatus.COMPLETED), timeout=30, interval=0.2)
        await passes_run(stack.app, lifecycle=3, scheduler=5)   # still nothing dialed twice
        exit_code = await stack.app.stop()
        calls = await calls_of(stack.sessions, task_id)
        async with stack.sessions() as session:
            task_events = [e.type for e in await repo.list_task_events(session, user_id, task_id)]
    finally:
        await stack.close()

    assert dialed(stack.fake) == Counter({number: 2})       # before the crash, and once after the recovery
    assert [c.attempt_number for c in calls] == [1, 2]
    assert calls[0].outcome is CallOutcome.FAILED_AI          # answered, then cut off: the analyzer judged it
    assert calls[1].outcome is CallOutcome.ANSWERED and calls[1].created_at > recovered_at
    assert task_events.count("lifecycle.recovered") == 1
    log = stack.app.all_logs()
    assert exit_code == 0 and "Traceback" not in log, log


async def test_killed_mid_call_the_ami_resync_keeps_the_live_call_and_settles_the_dead_one(tmp_path, engine):
    live, dead = "+14155550410", "+14155550411"
    stack = Stack(tmp_path, engine, [live, dead])
    try:
        user_id, (live_task, dead_task) = await stack.start()
        await stack.wait_answered(2)
        live_call, = await calls_of(stack.sessions, live_task)
        dead_call, = await calls_of(stack.sessions, dead_task)

        await stack.app.kill9()
        # While the app is down, one callee hangs up (Asterisk tells no one: no AMI client is logged in); the
        # other is still talking when the app comes back.
        assert stack.fake.hang_up_calls([dead]) == 1
        await eventually(lambda: all(c.hung_up for c in stack.fake.calls.values() if c.number == dead))
        await stack.app.start()

        await eventually(lambda: stack.fake.logins == 2, timeout=10)
        await eventually(lambda: ended_by(stack.sessions, user_id, dead_call.id), timeout=10, interval=0.1)
        assert await ended_by(stack.sessions, user_id, dead_call.id) == "ami.resync"
        await eventually(lambda: _status_is(stack.sessions, dead_task, TaskStatus.COMPLETED), timeout=15)

        await passes_run(stack.app, lifecycle=5, scheduler=5)   # the live call is left to Asterisk
        (still,) = await calls_of(stack.sessions, live_task)
        assert still.status is CallStatus.ANSWERED
        assert await task_status(stack.sessions, live_task) is TaskStatus.IN_PROGRESS
        assert dialed(stack.fake) == Counter({live: 1, dead: 1})

        # The live call ends by its own Hangup, over the new connection.
        assert stack.fake.hang_up_calls([live]) == 1
        await eventually(lambda: _status_is(stack.sessions, live_task, TaskStatus.COMPLETED), timeout=20)
        exit_code = await stack.app.stop()
        live_ended_by = await ended_by(stack.sessions, user_id, live_call.id)
        async with stack.sessions() as session:
            events = {task_id: [e.type for e in await repo.list_task_events(session, user_id, task_id)]
                      for task_id in (live_task, dead_task)}
    finally:
        await stack.close()

    assert dialed(stack.fake) == Counter({live: 1, dead: 1})   # nobody dialed twice
    assert live_ended_by == "ami.hangup"
    assert len(stack.fake.actions_named("CoreShowChannels")) == 2   # one re-sync per login
    assert not any("lifecycle.recovered" in types for types in events.values())
    log = stack.app.log_text()
    assert f"re-sync: call {live_call.id} is still up in Asterisk" in log
    assert f"re-sync: call {dead_call.id} was no longer in Asterisk; finished as answered" in log
    assert exit_code == 0 and "Traceback" not in log, log


async def _status_is(sessions, task_id: int, status: TaskStatus) -> bool:
    return await task_status(sessions, task_id) is status
