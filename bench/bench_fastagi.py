"""FastAGI call-start sessions per second on SQLite: our server vs panoramisk's fast_agi.Application, same route.

What each side runs (the same in both, except the server):
  - route: `CallRoutes.call_start`, unchanged -- the ids come as AGI() arguments (as the shipped dialplan passes
    them), one decision through the route's GroupCommit (call-starts that arrive together share one SQLite
    transaction: one SELECT, one UPDATE and one INSERT executemany), then 6 SET VARIABLE. panoramisk's handler
    calls that same route through a small adapter (its `send_command` for GET/SET VARIABLE), so the batched
    database path is used by both; only the FastAGI server differs.
  - database: a fresh SQLite file per side and run (WAL, synchronous=NORMAL), seeded with the same calls.
  - no-database pass: the same dialog, the decision answered from memory: what the servers themselves cost.
  - clients: another process, CONCURRENCY sessions at a time, each sending the environment captured from
    Asterisk 22 and answering commands like Asterisk (`200 result=1`). They are written on asyncio's
    transport level so that they cost less than the servers (Asterisk itself answers in C); their CPU is
    shown too.
Measured: sessions/s end to end (first connect to last close, in the client process) and the server's CPU per
session (this process, all threads: event loop + aiosqlite's thread). With --runs N the two servers run in
alternating order N times and the medians are compared; the load average is printed, because the figures
move with what else runs on the machine.

    .venv/bin/python bench/bench_fastagi.py [--sessions 3000] [--concurrency 50] [--runs 3]
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
from fastagi_server.protocol import AgiEnvironment, quote_argument, split_script  # noqa: E402
from fastagi_server.routes import CallRoutes, CallStartDecision  # noqa: E402
from fastagi_server.server import FastAgiServer  # noqa: E402
from opendeep.settings import load_settings  # noqa: E402
from tests.doubles.captures import CAPTURES  # noqa: E402

ENVIRONMENT = (CAPTURES / "agi-env-answered.raw").read_bytes()
SERVERS = {"ours": "ours (fastagi_server)", "panoramisk": "panoramisk fast_agi.Application"}


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


def _client_process(port, calls, concurrency, result_queue):
    result_queue.put(asyncio.run(_drive(port, calls, concurrency)))


# ---------------------------------------------------------------- panoramisk with the same route


class PanoramiskAgi:
    """Adapts panoramisk's Request to the small interface our routes use (env, get_variable, set_variable),
    sending the same command lines as our AgiSession."""

    def __init__(self, request):
        self.request = request
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


async def measure(kind: str, routes_cls, url: str, calls, concurrency: int) -> dict[str, float]:
    """Serve `calls` with server `kind` ("ours" / "panoramisk"); sessions/s and CPU per session."""
    settings = load_settings({"DATABASE_URL": url, "SECRET_KEY": "bench", "OPENAI_API_KEY": "sk-bench"},
                             dotenv=None)
    engine = create_engine(url)
    routes = routes_cls(settings, session_factory(engine))
    if kind == "ours":
        server = FastAgiServer(routes.table(), "127.0.0.1", 0)
        port = await server.start()
    else:
        app = Application(loop=asyncio.get_running_loop())

        async def call_start(request):
            await routes.call_start(PanoramiskAgi(request))

        app.add_route("call-start", call_start)
        server = await asyncio.start_server(app.handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    usage_before = resource.getrusage(resource.RUSAGE_SELF)  # this process only: the server and its threads
    process = context.Process(target=_client_process, args=(port, calls, concurrency, results))
    process.start()
    while results.empty():  # keep serving until the client process reports
        await asyncio.sleep(0.02)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    elapsed, dialed, client_cpu = results.get()
    process.join()
    if kind == "ours":
        await server.stop()
    else:
        server.close()
        await server.wait_closed()
    await engine.dispose()
    assert dialed == len(calls), f"{kind}: only {dialed} of {len(calls)} sessions got OPENDEEP_DIAL"
    per_session = 1e6 / len(calls)
    user = (usage.ru_utime - usage_before.ru_utime) * per_session
    system = (usage.ru_stime - usage_before.ru_stime) * per_session
    return {"rate": len(calls) / elapsed, "cpu": user + system, "user": user, "sys": system,
            "client": client_cpu * per_session}


def _line(label: str, figures: list[dict[str, float]]) -> str:
    def median(key):
        return statistics.median(figure[key] for figure in figures)
    rates = " ".join(f"{figure['rate']:.0f}" for figure in figures)
    return (f"  {label:<40} {median('rate'):6.0f} sessions/s  server CPU {median('cpu'):4.0f} us/session "
            f"(user {median('user'):3.0f} + sys {median('sys'):3.0f})  client CPU {median('client'):4.0f}  "
            f"runs: {rates}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3, help="alternating runs per server; medians are shown")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"FastAGI call-start, {args.sessions} sessions, {args.concurrency} concurrent AGI clients (separate "
          f"process), {args.runs} runs; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    figures: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            order = list(SERVERS) if run % 2 == 0 else list(reversed(SERVERS))  # neither always goes first
            for kind in order:
                url = f"sqlite+aiosqlite:///{tmp}/{kind}-{run}.db"
                calls = await seed(url, args.sessions, first_user=1 if kind == "ours" else 1000)
                figures.setdefault((kind, "db"), []).append(
                    await measure(kind, CallRoutes, url, calls, args.concurrency))
            for kind in order:
                url = f"sqlite+aiosqlite:///{tmp}/{kind}-{run}-memory.db"
                calls = [(index + 1, 1) for index in range(args.sessions)]
                figures.setdefault((kind, "mem"), []).append(
                    await measure(kind, MemoryRoutes, url, calls, args.concurrency))
    for mode, title in (("db", "route on SQLite"), ("mem", "same dialog, no database")):
        print(title + ":")
        for kind, label in SERVERS.items():
            print(_line(label, figures[(kind, mode)]))

    def median(kind, mode, key):
        return statistics.median(figure[key] for figure in figures[(kind, mode)])

    db_ratio = median("ours", "db", "rate") / median("panoramisk", "db", "rate")
    mem_ratio = median("ours", "mem", "rate") / median("panoramisk", "mem", "rate")
    cpu_ratio = median("panoramisk", "db", "cpu") / median("ours", "db", "cpu")
    print(f"ratio ours/panoramisk (medians): {db_ratio:.2f}x sessions/s with SQLite, {mem_ratio:.2f}x without the "
          f"database; panoramisk needs {cpu_ratio:.2f}x our server CPU per session on SQLite")
    floor = median("ours", "mem", "client")
    print(f"floor: the AGI client plays the mirror image of the same dialog (connect, environment, 6 replies, "
          f"close) as a bare asyncio protocol and costs {floor:.0f} us/session; a server 3x as fast as "
          f"panoramisk's would need {median('panoramisk', 'db', 'cpu') / 3:.0f} us/session with the database and "
          f"{median('panoramisk', 'mem', 'cpu') / 3:.0f} without it")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    ours_db = median("ours", "db", "rate")
    print(f"goals: >= 3x panoramisk -> {'met' if db_ratio >= 3 else 'NOT met'}; "
          f">= 3000 sessions/s on SQLite -> {'met' if ours_db >= 3000 else 'NOT met'}")


if __name__ == "__main__":
    asyncio.run(main())
