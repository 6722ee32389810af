"""Bulk writes of one tenant against the others' (issue 13, item 4), over HTTP on a real socket, SQLite and PostgreSQL:

  - import 10,000 targets (POST /api/campaigns/import) and 10,000 DND numbers (POST /api/dnd/import), while another
    tenant adds a DND number (POST /api/dnd) every 50 ms;
  - pause, resume and cancel the 10,000-task campaign (POST /api/campaigns/{id}/pause ...).

Printed per step: its wall time, its SQL statements, the longest write transaction (from its first INSERT /
UPDATE / DELETE to its commit, measured with SQLAlchemy events: on SQLite that is how long the file's one write
lock was held, and what every other writer waited for at most), and the other tenant's slowest POST /api/dnd
during it. Goal: a 10,000-task pause under 1 s, no write lock held for more than about a second.

    .venv/bin/python bench/bench_bulk_writes.py [--targets 10000] [--pg-url postgresql+asyncpg://...]

PostgreSQL: a scratch database is made on --pg-url's server (default: the tests' 127.0.0.1:5432) and dropped
after; without a server, only SQLite is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import event, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db import repo  # noqa: E402
from db.engine import create_engine, session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from opendeep.events import EventHub  # noqa: E402
from opendeep.passwords import hash_password  # noqa: E402
from opendeep.runtime import Runtime  # noqa: E402
from opendeep.settings import load_settings  # noqa: E402
from webui.app import WebComponent  # noqa: E402

PASSWORD = "bench-password"
WRITES = ("INSERT", "UPDATE", "DELETE")


class WriteLocks:
    """The longest write transaction while open: first write statement -> commit / rollback, per connection."""

    def __init__(self, engine) -> None:
        self.engine = engine.sync_engine
        self.longest = 0.0
        self.statements = 0
        self._began: dict[int, float] = {}
        event.listen(self.engine, "before_cursor_execute", self._statement)
        event.listen(self.engine, "commit", self._end)
        event.listen(self.engine, "rollback", self._end)

    def reset(self) -> None:
        self.longest, self.statements = 0.0, 0

    def _statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.statements += 1
        if statement.lstrip().upper().startswith(WRITES) or statement.lstrip().upper().startswith("WITH"):
            self._began.setdefault(id(conn), time.perf_counter())

    def _end(self, conn) -> None:
        began = self._began.pop(id(conn), None)
        if began is not None:
            self.longest = max(self.longest, time.perf_counter() - began)


async def logged_in(base_url: str, username: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=base_url, timeout=600)
    csrf = (await client.get("/api/session")).json()["csrf_token"]
    response = await client.post("/api/login", json={"username": username, "password": PASSWORD},
                                 headers={"x-csrf-token": csrf})
    client.headers["x-csrf-token"] = response.json()["csrf_token"]
    return client


async def other_tenant_posts(client: httpx.AsyncClient, stop: asyncio.Event, latencies: list[float],
                             failures: list[str]) -> None:
    """Bob adds a DND number every 50 ms while the step runs."""
    n = 0
    while not stop.is_set():
        n += 1
        started = time.perf_counter()
        response = await client.post("/api/dnd", json={"phone_number": f"+1212555{n % 10000:04d}"})
        latencies.append(time.perf_counter() - started)
        if response.status_code not in (200, 201):
            failures.append(f"{response.status_code} {response.text[:80]}")
        await asyncio.sleep(0.05)


async def step(name: str, locks: WriteLocks, bob: httpx.AsyncClient, request) -> dict:
    locks.reset()
    stop = asyncio.Event()
    latencies: list[float] = []
    failures: list[str] = []
    background = asyncio.create_task(other_tenant_posts(bob, stop, latencies, failures))
    await asyncio.sleep(0.1)
    started = time.perf_counter()
    response = await request()
    seconds = time.perf_counter() - started
    stop.set()
    await background
    assert response.status_code in (200, 201), f"{name}: {response.status_code} {response.text[:300]}"
    return {"step": name, "seconds": seconds, "statements": locks.statements, "lock": locks.longest,
            "bob_max": max(latencies, default=float("nan")), "bob_posts": len(latencies), "bob_failed": len(failures),
            "note": response.json().get("message", "")}


async def measure(url: str, targets: int) -> list[dict]:
    await upgrade(url)
    settings = load_settings({"DATABASE_URL": url, "SECRET_KEY": "bench"}, dotenv=None)
    engine = create_engine(url)
    runtime = Runtime(settings=settings, engine=engine, sessions=session_factory(engine), events=EventHub())
    async with runtime.sessions() as session:
        for name in ("alice", "bob"):
            await repo.create_user(session, name, hash_password(PASSWORD))
        await session.commit()
    locks = WriteLocks(engine)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    web = WebComponent(runtime, sock=sock)
    await web.start()
    base_url = f"http://127.0.0.1:{web.port}"
    alice, bob = await logged_in(base_url, "alice"), await logged_in(base_url, "bob")
    targets_csv = "name,phone_number,objective\n" + "".join(
        f"Shop {n},+1415{5550000 + n:07d},Ask for a quote\n" for n in range(targets))
    dnd_csv = "phone_number,reason\n" + "".join(f"+1650{5550000 + n:07d},asked us\n" for n in range(targets))
    csv_headers = {"content-type": "text/csv"}
    results = []
    try:
        imported = await step(f"import {targets} targets", locks, bob, lambda: alice.post(
            "/api/campaigns/import?name=bench", content=targets_csv.encode(), headers=csv_headers))
        results.append(imported)
        campaign_id = (await alice.get("/api/campaigns")).json()["campaigns"][0]["id"]
        results.append(await step(f"import {targets} DND numbers", locks, bob, lambda: alice.post(
            "/api/dnd/import", content=dnd_csv.encode(), headers=csv_headers)))
        for action in ("pause", "resume", "cancel"):
            results.append(await step(f"{action} the {targets}-task campaign", locks, bob, lambda a=action: alice.post(
                f"/api/campaigns/{campaign_id}/{a}")))
    finally:
        await alice.aclose()
        await bob.aclose()
        await web.stop()
        await engine.dispose()
    return results


async def scratch_pg(server_url: str) -> str | None:
    database = f"opendeep_bench_{uuid.uuid4().hex[:10]}"
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{database}"'))
    except OSError:
        return None
    finally:
        await engine.dispose()
    return database


async def drop_pg(server_url: str, database: str) -> None:
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)
    async with engine.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    await engine.dispose()


def report(backend: str, results: list[dict]) -> None:
    print(f"\n{backend}")
    print(f"  {'step':<36} {'wall s':>7} {'stmts':>6} {'longest write txn ms':>21} {'other tenant POST /api/dnd':>28}")
    for r in results:
        other = f"max {1000 * r['bob_max']:.0f} ms, {r['bob_posts']} ok" if not r["bob_failed"] else \
            f"{r['bob_failed']} FAILED of {r['bob_posts']}"
        print(f"  {r['step']:<36} {r['seconds']:>7.2f} {r['statements']:>6} {1000 * r['lock']:>21.0f} {other:>28}")


async def main(args: argparse.Namespace) -> None:
    print(f"bulk writes over HTTP, {args.targets} rows; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} "
          f"CPUs (other work on the machine slows every figure)")
    with tempfile.TemporaryDirectory() as tmp:
        report("SQLite", await measure(f"sqlite+aiosqlite:///{tmp}/bench.db", args.targets))
    database = await scratch_pg(args.pg_url)
    if database is None:
        print(f"\nPostgreSQL: no server at {args.pg_url}; not measured")
    else:
        try:
            report("PostgreSQL", await measure(args.pg_url.rsplit("/", 1)[0] + f"/{database}", args.targets))
        finally:
            await drop_pg(args.pg_url, database)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end; goal: pause under 1 s, write transactions well under "
          f"1 s, no POST /api/dnd of the other tenant failing or waiting long")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--pg-url", default=os.environ.get("OPENDEEP_TEST_PG_URL",
                                                           "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
    asyncio.run(main(parser.parse_args()))
