"""The AMI connection drops in the middle of a campaign, against a real `opendeep serve` subprocess: it
reconnects, re-syncs (the calls still up in Asterisk stay up and are not dialed again), and the campaign goes on
to the end with every task dialed exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter

from sqlalchemy import select

from ami_controller.manager import AmiController
from db import repo
from db.engine import create_engine, session_factory
from db.models import Call, CallOutcome, CallStatus, CampaignStatus, Task, TaskStatus
from db.types import utcnow
from tests.doubles.ami_helpers import ami_settings, eventually, make_tenant
from tests.doubles.fake_ami import FakeAmi, pairs_get
from tests.doubles.fake_openai import FakeOpenAI
from tests.doubles.reliability_serve import (
    AMI_SECRET,
    CrashableServe,
    answer_as_analyzer,
    seed_campaign,
    window_open_now,
)

NUMBERS = [f"+1415555{n:04d}" for n in range(300, 308)]


async def test_ami_dropped_mid_campaign_reconnects_and_every_task_is_dialed_once(tmp_path):
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'opendeep.db'}"
    fake = FakeAmi(username="opendeep", secret=AMI_SECRET, hold_seconds=600)   # batch 1 stays on the line
    model = FakeOpenAI()
    model.responder = answer_as_analyzer
    stack = CrashableServe(tmp_path, database_url=database_url, only="fastagi,audiosocket,ami,aftercall")
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    try:
        await fake.start()
        await model.start()
        stack.env.update(AMI_PORT=str(fake.port), OPENAI_BASE_URL=model.base_url,
                         MAX_CONCURRENT_CALLS="4", MAX_CONCURRENT_CALLS_PER_USER="4",
                         DEFAULT_CALLING_WINDOW=window_open_now(NUMBERS[0]), AMI_RECONNECT_MAX_SECONDS="0.5",
                         SCHEDULER_POLL_SECONDS="0.2", LIFECYCLE_INTERVAL_SECONDS="0.5")
        await stack.cli("db", "upgrade")
        user_id, campaign_id, task_ids = await seed_campaign(database_url, NUMBERS)
        await stack.start()

        # Batch 1: four calls (MAX_CONCURRENT_CALLS), answered and still talking.
        async def answered_calls() -> int:
            async with sessions() as session:
                rows = await session.scalars(select(Call).where(Call.status == CallStatus.ANSWERED))
                return len(rows.all())
        await eventually(lambda: _is(answered_calls(), 4), timeout=30, interval=0.1)
        assert len(fake.actions_named("Originate")) == 4

        # The AMI connection drops (a network glitch; Asterisk keeps its calls). The app reconnects and asks
        # Asterisk what is still up: all four are, so none is finished and none is dialed again.
        await fake.drop_connections(kill_calls=False)
        await eventually(lambda: fake.logins == 2 and fake.connected_clients == 1, timeout=10)
        await eventually(lambda: "re-sync: call" in stack.log_text(), timeout=5)
        await asyncio.sleep(1.0)   # five scheduler passes after the reconnect
        assert len(fake.actions_named("Originate")) == 4
        assert await answered_calls() == 4
        assert len(fake.actions_named("CoreShowChannels")) == 2   # one re-sync per login

        # The callees hang up: the events arrive over the new connection and the campaign goes on.
        fake.hold_seconds = 0.3
        assert fake.hang_up_calls() == 4

        async def all_completed() -> bool:
            async with sessions() as session:
                tasks = (await session.scalars(select(Task).where(Task.id.in_(task_ids)))).all()
                return all(task.status is TaskStatus.COMPLETED for task in tasks)
        await eventually(all_completed, timeout=40, interval=0.2)

        # Another drop, with nothing in flight, so that the summary is written after a reconnect too.
        await fake.drop_connections(kill_calls=False)

        async def summarized() -> bool:
            async with sessions() as session:
                campaign = await repo.get_campaign(session, user_id, campaign_id)
                return campaign.summarized_at is not None
        await eventually(summarized, timeout=15, interval=0.2)
        await eventually(lambda: fake.logins == 3, timeout=10)
        exit_code = await stack.stop()
    finally:
        stack.kill()
        await fake.stop()
        await model.stop()

    log = stack.all_logs()
    originates = fake.actions_named("Originate")
    dialed = Counter((pairs_get(action, "Channel") or "").split("@")[0].removeprefix("Local/") for action in originates)
    assert dialed == Counter({number: 1 for number in NUMBERS}), dialed     # every task exactly once
    assert len({pairs_get(action, "ActionID") for action in originates}) == len(originates)
    async with sessions() as session:
        calls = (await session.scalars(select(Call).order_by(Call.id))).all()
        campaign = await repo.get_campaign(session, user_id, campaign_id)
        events = {task_id: [e.type for e in await repo.list_task_events(session, user_id, task_id)]
                  for task_id in task_ids}
    await engine.dispose()
    assert len(calls) == len(NUMBERS)                                        # one row per Originate, no more
    assert {call.outcome for call in calls} == {CallOutcome.ANSWERED}
    assert sorted(call.task_id for call in calls) == sorted(task_ids)        # no task lost
    assert campaign.status is CampaignStatus.COMPLETED and campaign.summary
    assert not any("lifecycle.recovered" in types for types in events.values())
    assert log.count("lost the AMI connection") == 2
    assert log.count("is still up in Asterisk") == 4
    assert "no longer in Asterisk" not in log
    assert exit_code == 0 and "Traceback" not in log, log


async def test_a_database_error_during_the_resync_does_not_stop_the_reconnecting(settings, sessions, caplog):
    """Found while building the test above: an exception other than an AMI error inside the re-sync (e.g. the
    database briefly unreachable) ended the connection task for good, and the process never dialed again."""
    fake = FakeAmi(username="opendeep", secret="secret")
    await fake.start()
    failures = []

    def flaky_sessions():
        if not failures:
            failures.append(utcnow())
            raise OSError("database unreachable (simulated)")
        return sessions()

    _, _, (task_id,) = await make_tenant(sessions, numbers=[NUMBERS[0]])
    controller = AmiController(ami_settings(settings, fake.port), flaky_sessions, None)
    await controller.start()
    try:
        await controller.wait_connected(10)
    finally:
        await controller.stop()
        await fake.stop()
    assert failures and fake.logins == 2          # the first re-sync failed; the second login went through
    assert "AMI re-sync with" in caplog.text and "database unreachable" in caplog.text


async def _is(value, expected) -> bool:
    return (await value) == expected
