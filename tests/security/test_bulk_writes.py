"""One tenant must not stall every tenant's writes: a 10,000-task campaign is paused, resumed and cancelled, and
10,000-row files are imported, in set-based statements committed in chunks of repo.BULK_CHUNK_ROWS.

SQLite has one write lock for the whole file. Before, pausing a 10,000-task campaign ran one ORM update per task
in a single transaction (quadratic: it had not committed after 17 minutes), and a 10,000-row import held the lock
for tens of seconds while another tenant's POST /api/dnd failed with 500. These tests go over the JSON API and
bound the work without a stopwatch: they count the SQL statements a request runs and the rows each committed
transaction writes, so they hold on any machine (the wall-clock figures are in bench/bench_bulk_writes.py).
"""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta

import pytest
import pytest_asyncio
from sqlalchemy import event, func, select

from db import repo, task_life
from db.models import Call, CallStatus, CampaignStatus, DndEntry, Task, TaskEvent, TaskStatus
from db.types import utcnow
from tests.doubles.task_state import put_task
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from webui.app import create_app

TARGETS = 10_000
BOUND_SECONDS = 120   # "bounded time", generous for any machine: before, a pause had not committed after 17 minutes
CHUNK = repo.BULK_CHUNK_ROWS
CHUNKS = math.ceil(TARGETS / CHUNK)


class StatementLog:
    """The SQL statements an engine runs while open, and for each committed transaction how many statements it
    held and the most rows one of them wrote (an executemany's parameter sets)."""

    def __init__(self, engine) -> None:
        self.engine = engine.sync_engine
        self.statements: list[str] = []
        self.transactions: list[tuple[int, int]] = []   # (statements, most rows in one statement)
        self._open: dict[int, tuple[int, int]] = {}

    def __enter__(self) -> StatementLog:
        event.listen(self.engine, "before_cursor_execute", self._statement)
        event.listen(self.engine, "commit", self._commit)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(self.engine, "before_cursor_execute", self._statement)
        event.remove(self.engine, "commit", self._commit)

    def _statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.statements.append(statement)
        count, rows = self._open.get(id(conn), (0, 0))
        self._open[id(conn)] = (count + 1, max(rows, len(context.compiled_parameters)))

    def _commit(self, conn) -> None:
        self.transactions.append(self._open.pop(id(conn), (0, 0)))

    def count(self, text: str) -> int:
        return sum(text in statement for statement in self.statements)


@pytest_asyncio.fixture
async def tenants(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    alice, bob = await add_user(runtime, "alice"), await add_user(runtime, "bob")
    app = create_app(runtime)
    clients = {name: WebClient(app) for name in ("alice", "bob")}
    for name, client in clients.items():
        await client.login(name)
    yield runtime, engine, {"alice": alice, "bob": bob}, clients
    for client in clients.values():
        await client.aclose()


async def _campaign_of_10000(runtime, user_id: int) -> tuple[int, dict[str, int]]:
    """Alice's campaign: mostly pending tasks, some retries due later, 3 calls in progress, one task she paused
    on its own (resuming the campaign must leave it paused)."""
    async with runtime.sessions() as session:
        campaign = await repo.create_campaign(session, user_id, name="10k")
        for start in range(0, TARGETS, CHUNK):
            await repo.add_tasks(session, user_id, campaign.id, [{"target_name": f"Target {n}",
                                                                  "phone_number": f"+1415555{n:04d}"}
                                                                 for n in range(start, start + CHUNK)])
        ids = [task.id for task in await repo.list_tasks(session, user_id, campaign.id)]
        retry_at = (utcnow() + timedelta(hours=2)).replace(microsecond=0)
        for task_id in ids[100:110]:
            await put_task(session, user_id, task_id, TaskStatus.RETRY_SCHEDULED, next_action_time=retry_at)
        for task_id in ids[:3]:
            await put_task(session, user_id, task_id, TaskStatus.IN_PROGRESS)
            session.add(Call(user_id=user_id, task_id=task_id, attempt_number=1, status=CallStatus.ANSWERED,
                             dialed_number="+14150000000", channel=f"PJSIP/trunk-{task_id:08x}"))
        await session.commit()
    return campaign.id, {"live": 3, "retry_first": ids[100], "own_pause": ids[200], "last": ids[-1]}


async def _events(runtime, user_id: int, type_: str) -> int:
    async with runtime.sessions() as session:
        return await session.scalar(select(func.count(TaskEvent.id))
                                    .where(TaskEvent.user_id == user_id, TaskEvent.type == type_))


async def test_pausing_a_10000_task_campaign_commits_in_chunks_of_a_bounded_number_of_statements(tenants,
                                                                                               monkeypatch):
    runtime, engine, users, clients = tenants
    alice = users["alice"]
    campaign_id, ids = await _campaign_of_10000(runtime, alice)
    paused_alone = await clients["alice"].api("POST", f"/api/tasks/{ids['own_pause']}/pause")
    assert paused_alone.status_code == 200

    published: list[tuple[str, dict]] = []   # what the open pages are sent (a page's own queue keeps 1,000)
    publish = runtime.events.publish
    monkeypatch.setattr(runtime.events, "publish", lambda user_id, kind, payload=None: (
        published.append((kind, payload)), publish(user_id, kind, payload)))
    with StatementLog(engine) as log:
        paused = await asyncio.wait_for(clients["alice"].api("POST", f"/api/campaigns/{campaign_id}/pause"),
                                        BOUND_SECONDS)
    assert paused.status_code == 200, paused.text
    waiting = TARGETS - ids["live"] - 1
    assert paused.json()["message"] == (f"campaign {campaign_id} paused ({waiting} task(s) held; "
                                        f"{ids['live']} call(s) in progress finish first)")
    assert len(paused.json()["changed_task_ids"]) == waiting
    # O(n / chunk), not O(n): read the chunk, one UPDATE for all of it, one INSERT ... SELECT of its events.
    assert log.count("UPDATE tasks") == CHUNKS and log.count("INSERT INTO task_events") == CHUNKS
    assert len(log.statements) <= 3 * CHUNKS + 15
    # Each commit wrote at most one chunk: the write lock is held for a chunk's worth of rows at a time.
    assert len(log.transactions) >= CHUNKS
    assert max(rows for _, rows in log.transactions) <= CHUNK
    assert max(statements for statements, _ in log.transactions) <= 4
    updates = [payload for kind, payload in published if kind == "task.updated"]
    assert len(updates) == waiting and {payload["status"] for payload in updates} == {"on_hold"}
    assert [kind for kind, _ in published if kind != "task.updated"] == ["campaign.updated"]

    async with runtime.sessions() as session:
        statuses = dict((await session.execute(
            select(Task.status, func.count(Task.id)).where(Task.campaign_id == campaign_id).group_by(Task.status)
        )).all())
        last = await repo.get_task(session, alice, ids["last"])
    assert statuses == {TaskStatus.ON_HOLD: TARGETS - ids["live"], TaskStatus.IN_PROGRESS: ids["live"]}
    assert last.context["paused"] == {"status": "pending", "by": "campaign",   # on hold is not due: time kept
                                      "next_action_time": last.next_action_time.isoformat()}
    assert await _events(runtime, alice, "task.paused") == waiting + 1   # and the one she paused alone

    resumed = await clients["alice"].api("POST", f"/api/campaigns/{campaign_id}/resume")
    assert resumed.status_code == 200
    assert resumed.json()["message"] == f"campaign {campaign_id} resumed ({waiting} task(s) due again)"
    async with runtime.sessions() as session:
        retry = await repo.get_task(session, alice, ids["retry_first"])
        alone = await repo.get_task(session, alice, ids["own_pause"])
        campaign = await repo.get_campaign(session, alice, campaign_id)
    assert retry.status is TaskStatus.RETRY_SCHEDULED and retry.next_action_time > utcnow() + timedelta(hours=1)
    assert "paused" not in retry.context
    assert alone.status is TaskStatus.ON_HOLD and alone.context["paused"]["by"] == "user"
    assert campaign.status is CampaignStatus.ACTIVE
    assert await _events(runtime, alice, "task.resumed") == waiting

    with StatementLog(engine) as log:
        cancelled = await clients["alice"].api("POST", f"/api/campaigns/{campaign_id}/cancel")
    assert cancelled.json()["message"].startswith(f"campaign {campaign_id} cancelled ({TARGETS} task(s) cancelled)")
    assert "ends on its own" in cancelled.json()["message"]   # the 3 live calls: no AMI in this process
    assert len(log.statements) <= 3 * CHUNKS + 15 and max(rows for _, rows in log.transactions) <= CHUNK
    assert await _events(runtime, alice, "task.cancelled") == TARGETS


async def test_a_bulk_move_reaches_only_its_own_users_tasks_and_skips_a_task_that_moved_meanwhile(tenants):
    runtime, _, users, _ = tenants
    alice, bob = users["alice"], users["bob"]
    async with runtime.sessions() as session:
        campaign = await repo.create_campaign(session, alice, name="c")
        first, second = await repo.add_tasks(session, alice, campaign.id, [
            {"target_name": "A", "phone_number": "+14155550101"}, {"target_name": "B", "phone_number": "+14155550102"}])
        assert await repo.add_tasks(session, bob, campaign.id, [{"target_name": "X", "phone_number": "+1415"}]) == []
        states = await repo.task_states(session, alice, campaign_id=campaign.id)
        assert await repo.task_states(session, bob, campaign_id=campaign.id) == []
        # The scheduler claims the second task between the read and the move.
        await put_task(session, alice, second, TaskStatus.QUEUED)
        moves = [task_life.TaskMove(s.id, s.updated_at, TaskStatus.CANCELLED, s.next_action_time) for s in states]
        assert await task_life.move_many(session, bob, moves, "injected", "task.cancelled") == []
        assert await task_life.move_many(session, alice, moves, "cancelled by user", "task.cancelled") == [first]
        await session.commit()
        assert [t.status for t in await repo.list_tasks(session, alice)] == [TaskStatus.CANCELLED, TaskStatus.QUEUED]
        assert [e.type for e in await repo.list_task_events(session, alice, first)] == ["task.cancelled"]
        assert await repo.list_task_events(session, alice, second) == []


def _targets_csv(rows: int) -> str:
    return "name,phone_number,objective\n" + "".join(f"Shop {n},+1415555{n:04d},Ask for a quote\n" for n in range(rows))


def _dnd_csv(rows: int) -> str:
    return "phone_number,reason\n" + "".join(f"+1650555{n:04d},asked us\n" for n in range(rows))


@pytest.mark.parametrize("kind", ["targets", "dnd"])
async def test_another_tenants_dnd_post_succeeds_while_a_10000_row_import_runs(tenants, kind):
    runtime, engine, users, clients = tenants
    path, body = (("/api/campaigns/import?name=big", _targets_csv(TARGETS)) if kind == "targets"
                  else ("/api/dnd/import", _dnd_csv(TARGETS)))
    first_commit = asyncio.Event()

    def committed(conn) -> None:
        first_commit.set()

    event.listen(engine.sync_engine, "commit", committed)
    try:
        with StatementLog(engine) as log:
            importing = asyncio.create_task(clients["alice"].api(
                "POST", path, content=body.encode(), headers={"content-type": "text/csv"}))
            # The import is under way: its first chunk is in (parsing the file comes first).
            await asyncio.wait([importing, asyncio.ensure_future(first_commit.wait())], timeout=BOUND_SECONDS,
                               return_when=asyncio.FIRST_COMPLETED)
            assert not importing.done(), (await importing).text
            bob_adds = await clients["bob"].api("POST", "/api/dnd", json={"phone_number": "+14155550199",
                                                                          "reason": "asked during the import"})
            imported = await asyncio.wait_for(importing, BOUND_SECONDS)
    finally:
        event.remove(engine.sync_engine, "commit", committed)
    assert bob_adds.status_code == 201, bob_adds.text
    assert imported.status_code in (200, 201), imported.text
    if kind == "targets":
        assert len(imported.json()["task_ids"]) == TARGETS
    else:
        assert imported.json() == {"imported": TARGETS, "added": TARGETS}
    # The import wrote in chunks, each its own short transaction, in O(n / chunk) statements.
    assert max(rows for _, rows in log.transactions) <= CHUNK
    assert sum(rows == CHUNK for _, rows in log.transactions) >= CHUNKS
    assert len(log.statements) <= 3 * CHUNKS + 30
    async with runtime.sessions() as session:
        assert await repo.is_dnd(session, users["bob"], "+14155550199")
        table, owner = (Task, Task.user_id) if kind == "targets" else (DndEntry, DndEntry.user_id)
        assert await session.scalar(select(func.count(table.id)).where(owner == users["alice"])) == TARGETS

    again = await clients["alice"].api("POST", "/api/dnd/import", content=_dnd_csv(600).encode(),
                                       headers={"content-type": "text/csv"})
    assert again.json() == {"imported": 600, "added": 0 if kind == "dnd" else 600}
