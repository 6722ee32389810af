"""Webhooks and /metrics benchmark. Three measurements:

1. Outbox throughput: N deliveries (enqueued through db/webhooks.py, as the repo hooks do) to 4 endpoints of a
   receiver in another process (a bare asyncio HTTP responder answering 200), sent by one WebhookSender: deliveries
   per second from enqueue-committed to recorded, and our CPU per delivery. SQLite, and PostgreSQL when reachable
   (OPENDEEP_TEST_PG_URL, default postgresql+asyncpg://postgres@127.0.0.1:5432/test).
2. The audio path while webhooks are being retried: bench/bench_audiosocket.py's run (N calls against an echoing
   model, the Asterisk side and the model in their own processes) twice, without and with a webhook sender in
   the same process (as `opendeep serve` runs it) working on: a slow endpoint (answers 503 after 2 s: every
   request is slow and retried), a dead one (connection refused) and a fast one, with 5 events every 0.1 s
   (at most 50 a second) enqueued for each. Backoff is shortened (db.webhooks.BACKOFF_BASE_SECONDS = 0.2 s) so
   the retries happen within the measured seconds. Prints the frame lateness p50 / p99 of both runs.
3. /metrics scrape time over HTTP: the registry filled as a busy process leaves it (every outcome, every FastAGI
   route x result, histograms observed for 200 live calls), a database with 200 live calls and 20,000 ended ones,
   200 scrapes one after another by an HTTP client in this process.

    .venv/bin/python bench/bench_webhooks.py [--deliveries 2000] [--calls 50] [--seconds 6] [--scrapes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_audiosocket  # noqa: E402
import httpx  # noqa: E402
from prometheus_client import generate_latest  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from db import repo  # noqa: E402
from db import webhooks as outbox  # noqa: E402
from db.engine import create_engine, session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.models import Call, CallOutcome, CallStatus, WebhookDelivery, WebhookDeliveryStatus  # noqa: E402
from db.types import utcnow  # noqa: E402
from opendeep import metrics  # noqa: E402
from opendeep.analyzer import ANALYZABLE_OUTCOMES  # noqa: E402
from opendeep.events import EventHub  # noqa: E402
from opendeep.runtime import Runtime  # noqa: E402
from opendeep.settings import load_settings  # noqa: E402
from opendeep.webhooks import WebhookSender  # noqa: E402
from webui.app import WebComponent  # noqa: E402

PG_URL = os.environ.get("OPENDEEP_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# ---------------------------------------------------------------- the receiver (its own process)


class Responder(asyncio.Protocol):
    """HTTP/1.1 keep-alive: reads each request (head + Content-Length body) and answers after `delay` with
    `status`. Requests to /slow wait 2 s and get 503."""

    def __init__(self) -> None:
        self.buffer = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            slow = b" /slow " in head.split(b"\r\n", 1)[0]
            answer = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n" if slow
                      else b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            if slow:
                asyncio.get_running_loop().call_later(2.0, self._write, answer)
            else:
                self._write(answer)

    def _write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)


async def role_receiver() -> None:
    server = await asyncio.get_running_loop().create_server(Responder, "127.0.0.1", 0)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)   # until our parent closes stdin


async def start_receiver() -> tuple[asyncio.subprocess.Process, int]:
    process = await asyncio.create_subprocess_exec(sys.executable, __file__, "--role", "receiver",
                                                   stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    port = json.loads(await process.stdout.readline())["port"]
    return process, port


async def stop_receiver(process: asyncio.subprocess.Process) -> None:
    process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), 5)
    except TimeoutError:
        process.kill()
        await process.wait()


def dead_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()   # nothing listens there any more: connection refused
    return port


# ---------------------------------------------------------------- 1. outbox throughput


async def fresh_database(kind: str, workdir: Path) -> tuple[str, str | None]:
    """(url, database to drop afterwards)."""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / f'webhooks_{time.monotonic_ns()}.db'}"
        await upgrade(url)
        return url, None
    name = f"opendeep_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)
    async with admin.connect() as connection:
        from sqlalchemy import text
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    url = PG_URL.rpartition("/")[0] + "/" + name
    await upgrade(url)
    return url, name


async def drop_database(name: str | None) -> None:
    if name is None:
        return
    from sqlalchemy import text
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


async def seed_endpoints(sessions, urls: list[str]) -> int:
    async with sessions() as session, session.begin():
        user = await repo.create_user(session, f"bench-{uuid.uuid4().hex[:6]}", "x")
        for url in urls:
            await outbox.add_endpoint(session, user.id, url, "whsec_bench-secret-0123456789", ["call.ended"])
        return user.id


async def throughput(kind: str, deliveries: int, port: int, workdir: Path) -> dict[str, float]:
    url, dropped = await fresh_database(kind, workdir)
    engine = create_engine(url)
    sessions = session_factory(engine)
    settings = load_settings({"DATABASE_URL": url, "WEBHOOK_ALLOW_PRIVATE": "true"}, dotenv=None)
    try:
        user_id = await seed_endpoints(sessions, [f"http://127.0.0.1:{port}/fast/{n}" for n in range(4)])
        per_event = 4
        enqueue_started = time.perf_counter()
        for start in range(0, deliveries // per_event, 250):
            async with sessions() as session, session.begin():
                for n in range(start, min(start + 250, deliveries // per_event)):
                    await outbox.enqueue_event(session, user_id, "call.ended", {"call_id": n, "outcome": "answered"})
        enqueue_s = time.perf_counter() - enqueue_started
        sender = WebhookSender(settings, sessions)
        cpu_before, started = cpu_seconds(), time.perf_counter()
        running = asyncio.create_task(sender.run_forever(poll_seconds=0.05))
        total = per_event * (deliveries // per_event)
        while True:
            async with sessions() as session:
                done = await session.scalar(select(func.count()).select_from(WebhookDelivery)
                                            .where(WebhookDelivery.status == WebhookDeliveryStatus.DELIVERED))
            if done >= total:
                break
            await asyncio.sleep(0.05)
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await sender.close()
        return {"deliveries": total, "per_s": total / wall, "cpu_ms": 1000 * cpu / total,
                "enqueue_us": 1e6 * enqueue_s / total}
    finally:
        await engine.dispose()
        await drop_database(dropped)


# ---------------------------------------------------------------- 2. the audio path under webhook retries


async def webhook_load(url: str, port: int, stop: asyncio.Event, stats: dict[str, int]) -> None:
    """A sender busy with a slow, a dead and a fast endpoint, and 5 new events every 0.1 s for each."""
    engine = create_engine(url)
    sessions = session_factory(engine)
    settings = load_settings({"DATABASE_URL": url, "WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_TIMEOUT_SECONDS": "5"},
                             dotenv=None)
    user_id = await seed_endpoints(sessions, [f"http://127.0.0.1:{port}/slow", f"http://127.0.0.1:{dead_port()}/x",
                                              f"http://127.0.0.1:{port}/fast"])
    sender = WebhookSender(settings, sessions)
    running = asyncio.create_task(sender.run_forever(poll_seconds=0.1))
    n = 0
    try:
        while not stop.is_set():
            async with sessions() as session, session.begin():
                for _ in range(5):
                    n += 1
                    await outbox.enqueue_event(session, user_id, "call.ended", {"call_id": n})
            await asyncio.sleep(0.1)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await sender.close()
        async with sessions() as session:
            rows = await session.execute(select(WebhookDelivery.status, func.sum(WebhookDelivery.attempts))
                                         .group_by(WebhookDelivery.status))
            stats.update({status.value: int(attempts or 0) for status, attempts in rows})
        stats["events"] = n
        await engine.dispose()


async def audio_with_and_without_webhooks(calls: int, seconds: float, port: int,
                                          workdir: Path) -> list[tuple[str, dict[str, float], dict[str, int]]]:
    results = []
    baseline = await bench_audiosocket.run(calls, seconds, workdir, False, None)
    results.append(("no webhooks", baseline, {}))
    outbox.BACKOFF_BASE_SECONDS = 0.2   # retries within the measured seconds (the shipped base is 10 s)
    stop, stats = asyncio.Event(), {}
    url = f"sqlite+aiosqlite:///{workdir / f'load_{time.monotonic_ns()}.db'}"
    await upgrade(url)   # before the audio run's own migration: Alembic runs one at a time in a process
    load = asyncio.create_task(webhook_load(url, port, stop, stats))
    try:
        loaded = await bench_audiosocket.run(calls, seconds, workdir, False, None)
    finally:
        stop.set()
        await load
        outbox.BACKOFF_BASE_SECONDS = 10.0
    results.append(("webhooks retried", loaded, stats))
    return results


# ---------------------------------------------------------------- 3. /metrics scrape time


def fill_registry(live_calls: int) -> None:
    metrics.CALLS_IN_PROGRESS.set(live_calls)
    metrics.AUDIOSOCKET_LIVE_CALLS.set(live_calls)
    metrics.AMI_CONNECTED.set(1)
    for result in ("accepted", "refused", "error"):
        metrics.ORIGINATES.labels(result=result).inc(1000)
        metrics.WEBHOOK_DELIVERIES.labels(result={"accepted": "delivered", "refused": "failed",
                                                  "error": "gave_up"}[result]).inc(10)
    for outcome in CallOutcome:
        metrics.CALL_OUTCOMES.labels(outcome=outcome.value).inc(100)
    for route in ("call-start", "call-answered", "amd", "transfer", "call-end", "unknown"):
        for result in ("ok", "refused", "error"):
            metrics.FASTAGI_SESSIONS.labels(route=route, result=result).inc(100)
        for n in range(200):
            metrics.FASTAGI_SECONDS.labels(route=route).observe(0.001 * (n % 50))
    for n in range(live_calls * 50):
        metrics.FRAME_LATENESS.observe(0.0001 * (n % 100))
    for n in range(live_calls):
        metrics.MODEL_CONNECT_SECONDS.observe(0.3 + 0.001 * n)
        metrics.MODEL_FIRST_AUDIO_SECONDS.observe(0.8 + 0.001 * n)


async def scrape_times(live_calls: int, ended_calls: int, scrapes: int, workdir: Path) -> dict[str, float]:
    url = f"sqlite+aiosqlite:///{workdir / f'metrics_{time.monotonic_ns()}.db'}"
    await upgrade(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    now = utcnow()
    async with sessions() as session, session.begin():
        user = await repo.create_user(session, "bench-metrics", "x")
        campaign = await repo.create_campaign(session, user.id, name="bench")
        task = await repo.add_task(session, user.id, campaign.id, target_name="t", phone_number="+4930000000")
        session.add_all(Call(user_id=user.id, task_id=task.id, attempt_number=n, dialed_number="+4930000000",
                             status=CallStatus.ANSWERED if n < live_calls else CallStatus.ENDED,
                             outcome=None if n < live_calls else CallOutcome.ANSWERED,
                             ended_at=None if n < live_calls else now,
                             analyzed_at=None if n < live_calls or n % 10 == 0 else now)
                        for n in range(live_calls + ended_calls))
    fill_registry(live_calls)
    settings = load_settings({"DATABASE_URL": url, "METRICS_ENABLED": "true", "SECRET_KEY": "bench"}, dotenv=None)
    runtime = Runtime(settings=settings, engine=engine, sessions=sessions, events=EventHub())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    web = WebComponent(runtime, sock=sock)
    await web.start()
    times = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web.port}", timeout=10) as client:
            response = await client.get("/metrics")
            size, series = len(response.content), sum(1 for line in response.text.splitlines()
                                                      if line and not line.startswith("#"))
            for _ in range(scrapes):
                started = time.perf_counter()
                response = await client.get("/metrics")
                times.append(time.perf_counter() - started)
                assert response.status_code == 200
        started = time.perf_counter()
        for _ in range(scrapes):
            generate_latest(metrics.REGISTRY)
        render = (time.perf_counter() - started) / scrapes
        counts = []
        for _ in range(20):
            started = time.perf_counter()
            async with sessions() as session:
                await session.scalar(select(func.count()).select_from(Call).where(
                    Call.status == CallStatus.ENDED, Call.analyzed_at.is_(None),
                    Call.outcome.in_(ANALYZABLE_OUTCOMES)))
            counts.append(time.perf_counter() - started)
    finally:
        await web.stop()
        await runtime.close()
    return {"p50_ms": 1000 * statistics.median(times), "p99_ms": 1000 * pct(times, 0.99), "bytes": size,
            "series": series, "render_ms": 1000 * render,
            "count_ms": 1000 * statistics.median(counts)}


async def pg_reachable() -> bool:
    engine = create_engine(PG_URL, pool_size=1, max_overflow=0)
    try:
        async with asyncio.timeout(3):
            async with engine.connect():
                return True
    except Exception:
        return False
    finally:
        await engine.dispose()


async def main(args: argparse.Namespace) -> None:
    if args.role == "receiver":
        await role_receiver()
        return
    import logging
    logging.basicConfig(level=logging.ERROR)
    print(f"webhooks + /metrics; our process pid {os.getpid()}, receiver in its own process; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    receiver, port = await start_receiver()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            print("\n1. outbox -> 4 endpoints answering 200 (one sender, WEBHOOK_CONCURRENCY_PER_ENDPOINT=4)")
            print(f"{'database':>10} {'deliveries':>10} {'per s':>8} {'CPU ms/delivery':>16} {'enqueue us':>11}")
            kinds = ["sqlite"] + (["postgresql"] if await pg_reachable() else [])
            for kind in kinds:
                r = await throughput(kind, args.deliveries, port, workdir)
                print(f"{kind:>10} {r['deliveries']:>10d} {r['per_s']:>8.0f} {r['cpu_ms']:>16.2f} "
                      f"{r['enqueue_us']:>11.0f}", flush=True)
            if args.calls:
                print(f"\n2. AudioSocket frame lateness, {args.calls} calls, {args.seconds:g} s, without and with a "
                      f"sender retrying a slow (2 s, 503) and a dead endpoint beside a fast one (times in ms)")
                print(f"{'run':>17} {'late p50':>9} {'late p99':>9} {'late max':>9} {'CPU %':>6}  webhook attempts")
                for label, r, stats in await audio_with_and_without_webhooks(args.calls, args.seconds, port, workdir):
                    print(f"{label:>17} {r['late_p50_ms']:>9.2f} {r['late_p99_ms']:>9.2f} {r['late_max_ms']:>9.2f} "
                          f"{r['cpu_pct']:>6.0f}  {json.dumps(stats) if stats else '-'}", flush=True)
            print(f"\n3. GET /metrics over HTTP, {args.scrapes} scrapes, registry as with 200 live calls, "
                  f"database with 200 live + 20,000 ended calls (SQLite)")
            r = await scrape_times(200, 20000, args.scrapes, workdir)
            print(f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms; {r['series']} series, {r['bytes']} bytes; "
                  f"rendering the registry alone {r['render_ms']:.2f} ms, the analyzer queue-depth count "
                  f"{r['count_ms']:.2f} ms (median), the rest HTTP")
    finally:
        await stop_receiver(receiver)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    import faulthandler
    import signal
    faulthandler.register(signal.SIGUSR1, all_threads=True)   # `kill -USR1 <pid>` shows where a run hangs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=50, help="0: skip the audio measurement")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--role", choices=["bench", "receiver"], default="bench", help=argparse.SUPPRESS)
    asyncio.run(main(parser.parse_args()))
