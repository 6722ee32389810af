"""FastAGI call-start: server CPU per session, ours vs panoramisk's fast_agi.Application, and call-start latency.

Part 1, server CPU per session (the issue-17 goal: ours at most a third of panoramisk's, no database):
  - route: `CallRoutes.call_start`, unchanged -- the ids come as AGI() arguments (as the shipped dialplan passes
    them), the decision answered from memory (MemoryRoutes; with --with-db also through SQLite), then its
    variables. Ours sends them in one `EXEC MSet` round trip (AgiSession.set_variables). panoramisk runs the
    same route through a small adapter, twice: as a panoramisk application sets variables (one `SET VARIABLE`
    per variable, each a round trip) and with the same single MSet command as ours.
  - measured: CPU of the server process by getrusage(RUSAGE_SELF) (user + sys, all threads) from before the
    first session to after the last, divided by the sessions; not sessions/s, which the client caps.
  - clients: another process (spawned), CONCURRENCY sessions at a time, each sending the environment captured
    from Asterisk 22 and answering like Asterisk; written on asyncio's transport level; their CPU is shown.
  - with --runs N the servers run in alternating order N times and the medians are compared.
Part 2, latency: sessions started at a fixed rate (--rate, default 300/s, open loop: a slow server does not slow
the arrivals) against our server with the database (SQLite, and PostgreSQL at --pg-url when it answers); the
time from connect to the server's close, per session, in the client: p50 / p99 / max (goal: p99 < 10 ms).

The machine is shared: the load average is printed at the start and the end of each part. To rerun later:

    .venv/bin/python bench/bench_fastagi.py [--sessions 3000] [--runs 3] [--loop asyncio|uvloop] [--rate 300]
                                            [--seconds 10] [--skip-latency] [--skip-cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import re
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from panoramisk.fast_agi import Application  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from db.engine import create_engine, session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.models import Call, CallStatus, Campaign, Task, TaskStatus, User  # noqa: E402
from fastagi_server.protocol import AgiEnvironment, mset_command, quote_argument, split_script  # noqa: E402
from fastagi_server.routes import CallRoutes, CallStartDecision  # noqa: E402
from fastagi_server.server import FastAgiServer  # noqa: E402
from opendeep.settings import load_settings  # noqa: E402
from tests.doubles.captures import CAPTURES  # noqa: E402

ENVIRONMENT = (CAPTURES / "agi-env-answered.raw").read_bytes()
SERVERS = {"ours": "ours (fastagi_server), one EXEC MSet",
           "panoramisk": "panoramisk, one SET VARIABLE each",
           "panoramisk-mset": "panoramisk, the same EXEC MSet"}


# ---------------------------------------------------------------- the client side (another process)


def _environment(port: int) -> bytes:
    lines = []
    for line in ENVIRONMENT.split(b"\n"):
        if not line or line.startswith(b"agi_arg_"):
            continue
        if line.startswith(b"agi_network_script:"):
            line = b"agi_network_script: call-start"
        elif line.startswith(b"agi_request:"):
            line = b"agi_request: agi://127.0.0.1:%d/call-start" % port
        lines.append(line)
    return b"\n".join(lines) + b"\n"


def _with_ids(env: bytes, call_id: int, user_id: int) -> bytes:
    """What the shipped dialplan sends: AGI(agi://.../call-start,${OPENDEEP_CALL_ID},${OPENDEEP_USER_ID}), on the
    ;2 half whose Uniqueid our Originate assigned (the route checks it)."""
    env = re.sub(rb"(?m)^agi_uniqueid: .*$", b"agi_uniqueid: opendeep-%d-b" % call_id, env)
    return env + b"agi_arg_1: %d\nagi_arg_2: %d\n\n" % (call_id, user_id)


class _FakeAsterisk(asyncio.Protocol):
    """One AGI() run, answering like Asterisk: SET VARIABLE -> 200 result=1, GET VARIABLE from `variables`,
    510 otherwise. Replies straight from data_received: no stream, no task per session."""

    def __init__(self, env: bytes, variables: dict[bytes, bytes], done: asyncio.Future):
        self.env, self.variables, self.done = env, variables, done
        self.buffer = b""
        self.dialed = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.env)

    def data_received(self, data):
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        replies = []
        for line in lines:
            if line.startswith(b"SET VARIABLE "):
                self.dialed = self.dialed or line.startswith(b"SET VARIABLE OPENDEEP_DIAL ")
                replies.append(b"200 result=1\n")
            elif line.startswith(b"EXEC MSet "):
                self.dialed = self.dialed or b"OPENDEEP_DIAL=" in line
                replies.append(b"200 result=0\n")
            elif line.startswith(b"GET VARIABLE "):
                value = self.variables.get(line[13:].strip())
                replies.append(b"200 result=1 (%s)\n" % value if value is not None else b"200 result=0\n")
            else:
                replies.append(b"510 Invalid or unknown command\n")
        if replies:
            self.transport.write(b"".join(replies))

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(self.dialed)


async def _one_session(port: int, env: bytes, variables: dict[bytes, bytes]) -> bool:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    done = loop.create_future()
    await loop.create_connection(lambda: _FakeAsterisk(env, variables, done), sock=sock)
    return await done


async def _drive(port: int, calls: list[tuple[int, int]], concurrency: int) -> tuple[float, int, float]:
    env = _environment(port)
    queue = list(reversed(calls))
    dialed = 0

    async def worker():
        nonlocal dialed
        while queue:
            call_id, user_id = queue.pop()
            variables = {b"OPENDEEP_CALL_ID": str(call_id).encode(), b"OPENDEEP_USER_ID": str(user_id).encode()}
            # Not `dialed += await ...`: that reads `dialed` before awaiting and loses concurrent updates.
            got_dial = await _one_session(port, _with_ids(env, call_id, user_id), variables)
            dialed += got_dial

    cpu_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, dialed, time.process_time() - cpu_before


async def _drive_at_rate(port: int, calls: list[tuple[int, int]], rate: float) -> tuple[list[float], int]:
    """Open loop: session i starts at i / rate seconds, whatever the earlier ones do; each one's latency is
    connect -> the server's close (the dialplan waits exactly that long in AGI())."""
    env = _environment(port)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    dialed = 0

    async def one(call_id: int, user_id: int) -> None:
        nonlocal dialed
        variables = {b"OPENDEEP_CALL_ID": str(call_id).encode(), b"OPENDEEP_USER_ID": str(user_id).encode()}
        started = time.perf_counter()
        got_dial = await _one_session(port, _with_ids(env, call_id, user_id), variables)
        latencies.append(time.perf_counter() - started)
        dialed += got_dial

    start = loop.time() + 0.1
    tasks = []
    for index, (call_id, user_id) in enumerate(calls):
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(call_id, user_id)))
    await asyncio.gather(*tasks)
    return latencies, dialed


def _client_process(port, calls, concurrency, rate, loop_name, result_queue):
    runner = _runner(loop_name)
    with runner:
        if rate:
            result_queue.put(runner.run(_drive_at_rate(port, calls, rate)))
        else:
            result_queue.put(runner.run(_drive(port, calls, concurrency)))


def _runner(loop_name: str) -> asyncio.Runner:
    if loop_name == "uvloop":
        import uvloop
        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


# ---------------------------------------------------------------- panoramisk with the same route


class PanoramiskAgi:
    """Adapts panoramisk's Request to the small interface our routes use (env, get_variable, set_variable),
    sending the same command lines as our AgiSession."""

    def __init__(self, request, mset: bool):
        self.request = request
        self.mset = mset
        script, query = split_script(request.headers.get("agi_network_script", ""))
        args = []
        while f"agi_arg_{len(args) + 1}" in request.headers:
            args.append(request.headers[f"agi_arg_{len(args) + 1}"])
        self.env = AgiEnvironment(variables=dict(request.headers), args=tuple(args), script=script, query=query)

    async def get_variable(self, name: str) -> str | None:
        reply = await self.request.send_command(f"GET VARIABLE {quote_argument(name)}")
        result, data = reply.get("result", ("", ""))
        return data if result == "1" else None

    async def set_variable(self, name: str, value: str) -> None:
        await self.request.send_command(f"SET VARIABLE {quote_argument(name)} {quote_argument(str(value))}")

    async def set_variables(self, values) -> None:
        if self.mset:
            await self.request.send_command(mset_command(values))
        else:  # as a panoramisk application sets variables: one command, one round trip each
            for name, value in values.items():
                await self.set_variable(name, value)


class TimedRoutes(CallRoutes):
    """The production routes, with each call-start transaction (one GroupCommit batch) timed: where the latency
    goes, the database or the rest."""

    batches: list[tuple[int, float]] = []

    async def decide_call_start_batch(self, requests):
        started = time.perf_counter()
        try:
            return await super().decide_call_start_batch(requests)
        finally:
            TimedRoutes.batches.append((len(requests), time.perf_counter() - started))


class MemoryRoutes(CallRoutes):
    """The same AGI dialog as call-start, decided from memory: what the servers cost without the database."""

    async def decide_call_start(self, call_id, user_id, agi_uniqueid=""):
        return CallStartDecision(dial=f"PJSIP/+1415555{call_id:04d}@opendeep-trunk",
                                 audiosocket_uuid="40325ec2-5efd-4bd3-805f-53576e581d13", bridge=True)


# ---------------------------------------------------------------- database


async def seed(url: str, count: int, first_user: int) -> list[tuple[int, int]]:
    await upgrade(url)
    engine = create_engine(url)
    async with engine.begin() as db:
        users = 10
        await db.execute(insert(User), [{"id": first_user + u, "username": f"bench{first_user + u}",
                                         "password_hash": "x"} for u in range(users)])
        await db.execute(insert(Campaign), [{"id": first_user + u, "user_id": first_user + u, "name": "bench"}
                                            for u in range(users)])
        tasks, calls = [], []
        for index in range(count):
            user_id = first_user + index % users
            number = f"+1415555{index % 10000:04d}"
            tasks.append({"id": first_user * 100 + index, "user_id": user_id, "campaign_id": user_id,
                          "target_name": "x", "phone_number": number, "status": TaskStatus.IN_PROGRESS})
            calls.append({"id": first_user * 100 + index, "user_id": user_id, "task_id": first_user * 100 + index,
                          "attempt_number": 1, "dialed_number": number, "status": CallStatus.ORIGINATING})
        await db.execute(insert(Task), tasks)
        await db.execute(insert(Call), calls)
    await engine.dispose()
    return [(call["id"], call["user_id"]) for call in calls]


# ---------------------------------------------------------------- one measurement


async def measure(kind: str, routes_cls, url: str, calls, concurrency: int, *, rate: float = 0,
                  loop_name: str = "asyncio") -> dict:
    """Serve `calls` with server `kind`; sessions/s and server CPU per session (or, with `rate`, latencies)."""
    settings = load_settings({"DATABASE_URL": url, "SECRET_KEY": "bench", "OPENAI_API_KEY": "sk-bench"},
                             dotenv=None)
    engine = create_engine(url)
    routes = routes_cls(settings, session_factory(engine))
    if kind == "ours":
        server = FastAgiServer(routes.table(), "127.0.0.1", 0)
        port = await server.start()
    else:
        app = Application(loop=asyncio.get_running_loop())
        mset = kind == "panoramisk-mset"

        async def call_start(request):
            await routes.call_start(PanoramiskAgi(request, mset))

        app.add_route("call-start", call_start)
        server = await asyncio.start_server(app.handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    context = multiprocessing.get_context("spawn")   # a fresh interpreter: no copy of this process's loop
    results = context.Queue()
    process = context.Process(target=_client_process, args=(port, calls, concurrency, rate, loop_name, results))
    process.start()
    await asyncio.sleep(0)
    usage_before = resource.getrusage(resource.RUSAGE_SELF)  # this process only: the server and its threads
    while results.empty():  # keep serving until the client process reports
        await asyncio.sleep(0.05)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    outcome = results.get()
    process.join()
    if kind == "ours":
        await server.stop()
    else:
        server.close()
        await server.wait_closed()
    await engine.dispose()
    if rate:
        latencies, dialed = outcome
        assert dialed == len(calls), f"{kind}: only {dialed} of {len(calls)} sessions got OPENDEEP_DIAL"
        return {"latencies": latencies}
    elapsed, dialed, client_cpu = outcome
    assert dialed == len(calls), f"{kind}: only {dialed} of {len(calls)} sessions got OPENDEEP_DIAL"
    per_session = 1e6 / len(calls)
    user = (usage.ru_utime - usage_before.ru_utime) * per_session
    system = (usage.ru_stime - usage_before.ru_stime) * per_session
    return {"rate": len(calls) / elapsed, "cpu": user + system, "user": user, "sys": system,
            "client": client_cpu * per_session}


def _line(label: str, figures: list[dict[str, float]]) -> str:
    def median(key):
        return statistics.median(figure[key] for figure in figures)
    cpus = " ".join(f"{figure['cpu']:.0f}" for figure in figures)
    return (f"  {label:<42} server CPU {median('cpu'):4.0f} us/session (user {median('user'):3.0f} + sys "
            f"{median('sys'):3.0f}; runs: {cpus})  {median('rate'):6.0f} sessions/s  client CPU "
            f"{median('client'):4.0f} us")


def _machine() -> str:
    one, five, _ = os.getloadavg()
    return f"nproc {os.cpu_count()}, load average {one:.2f} (1 min) {five:.2f} (5 min)"


async def cpu_part(args, tmp: str) -> None:
    print(f"Server CPU per call-start session, {args.sessions} sessions x {args.runs} runs, {args.concurrency} "
          f"concurrent clients, loop {args.loop}; {_machine()} at start")
    modes = [("mem", MemoryRoutes, "same route, no database")]
    if args.with_db:
        modes.append(("db", CallRoutes, "route on SQLite"))
    figures: dict[tuple[str, str], list[dict[str, float]]] = {}
    for run in range(args.runs):
        order = list(SERVERS) if run % 2 == 0 else list(reversed(SERVERS))  # none always goes first
        for mode, routes_cls, _ in modes:
            for kind in order:
                url = f"sqlite+aiosqlite:///{tmp}/{kind}-{run}-{mode}.db"
                if mode == "db":
                    calls = await seed(url, args.sessions, first_user=1 + 1000 * list(SERVERS).index(kind))
                else:
                    calls = [(index + 1, 1) for index in range(args.sessions)]
                figures.setdefault((kind, mode), []).append(
                    await measure(kind, routes_cls, url, calls, args.concurrency, loop_name=args.loop))
    for mode, _, title in modes:
        print(title + ":")
        for kind, label in SERVERS.items():
            print(_line(label, figures[(kind, mode)]))

    def median(kind, mode="mem"):
        return statistics.median(figure["cpu"] for figure in figures[(kind, mode)])

    ours = median("ours")
    print(f"ours / panoramisk server CPU, no database: {ours / median('panoramisk'):.2f} of panoramisk as its "
          f"applications set variables, {ours / median('panoramisk-mset'):.2f} of panoramisk sending the same "
          f"MSet (goal: at most 0.33 of the first: "
          f"{'met' if ours <= median('panoramisk') / 3 else 'NOT met'})")
    print(f"  {_machine()} at the end")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def latency_part(args, tmp: str) -> None:
    count = int(args.rate * args.seconds)
    print(f"Call-start latency with the database, {args.rate:g} sessions/s for {args.seconds:g} s ({count} "
          f"sessions), our server, loop {args.loop}; {_machine()} at start")
    urls = [("SQLite", f"sqlite+aiosqlite:///{tmp}/latency.db")]
    if args.pg_url:
        try:
            await _reset_pg(args.pg_url)
            urls.append(("PostgreSQL", args.pg_url))
        except Exception as exc:  # no PostgreSQL here: say so, measure SQLite
            print(f"  PostgreSQL at {args.pg_url} not measured: {exc}")
    for name, url in urls:
        calls = await seed(url, count, first_user=1)
        TimedRoutes.batches = []
        latencies = (await measure("ours", TimedRoutes, url, calls, 0, rate=args.rate,
                                   loop_name=args.loop))["latencies"]
        p99 = _percentile(latencies, 0.99) * 1e3
        print(f"  {name:<10} p50 {_percentile(latencies, 0.5) * 1e3:5.2f} ms  p99 {p99:5.2f} ms  max "
              f"{max(latencies) * 1e3:6.2f} ms  (goal p99 < 10 ms: {'met' if p99 < 10 else 'NOT met'})")
        sizes = [size for size, _ in TimedRoutes.batches]
        took = [seconds for _, seconds in TimedRoutes.batches]
        print(f"  {'':<10} its transactions: {len(took)} for {sum(sizes)} call-starts (up to {max(sizes)} "
              f"together), p50 {_percentile(took, 0.5) * 1e3:.2f} ms  p99 {_percentile(took, 0.99) * 1e3:.2f} ms  "
              f"max {max(took) * 1e3:.2f} ms")
    print(f"  {_machine()} at the end")


async def _reset_pg(url: str) -> None:
    """An empty schema for the latency run (the bench's own database, never a production one)."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    target = make_url(url)
    admin = create_async_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as db:
            exists = await db.scalar(text("SELECT 1 FROM pg_database WHERE datname = :name"),
                                     {"name": target.database})
            if not exists:
                await db.execute(text(f'CREATE DATABASE "{target.database}"'))
    finally:
        await admin.dispose()
    engine = create_engine(url)
    try:
        async with engine.begin() as db:
            await db.execute(text("DROP SCHEMA public CASCADE"))
            await db.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()


async def main(args) -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_cpu:
            await cpu_part(args, tmp)
        if not args.skip_latency:
            await latency_part(args, tmp)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3, help="alternating runs per server; medians are shown")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="event loop of the servers and the clients")
    parser.add_argument("--with-db", action="store_true", help="also compare the servers with the route on SQLite")
    parser.add_argument("--rate", type=float, default=300.0, help="sessions/s of the latency part")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency part")
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL",
                                                           "postgresql+asyncpg://postgres@127.0.0.1:5432/bench_fastagi"),
                        help="a PostgreSQL database the latency part may empty (BENCH_PG_URL)")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    with _runner(arguments.loop) as main_runner:
        main_runner.run(main(arguments))
