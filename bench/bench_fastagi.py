"""FastAGI call-start sessions per second on SQLite: our server vs panoramisk's fast_agi.Application, same route.

Both servers run the same `CallRoutes.call_start` decision (2 GET VARIABLE, one DB transaction, 6 SET VARIABLE)
against the same kind of freshly seeded SQLite database, in this process. The AGI clients run in a separate
process (so the 2 cores are split client/server), CONCURRENCY at a time, each sending the environment captured
from Asterisk 22 and answering commands like Asterisk. A second pass runs the same AGI dialog with no database
(the route answers from memory) to show what the servers themselves cost.

    .venv/bin/python bench/bench_fastagi.py [--sessions 3000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
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
from fastagi_server.protocol import AgiEnvironment, split_script  # noqa: E402
from fastagi_server.routes import CallRoutes  # noqa: E402
from fastagi_server.server import FastAgiServer  # noqa: E402
from opendeep.settings import load_settings  # noqa: E402

CPU: dict[str, float] = {}
ENVIRONMENT = (ROOT.parent / "shared" / "asterisk" / "agi-env-answered.raw").read_bytes()


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
    """What the shipped dialplan sends: AGI(agi://.../call-start,${OPENDEEP_CALL_ID},${OPENDEEP_USER_ID})."""
    return env + b"agi_arg_1: %d\nagi_arg_2: %d\n\n" % (call_id, user_id)


async def _one_session(port: int, env: bytes, variables: dict[bytes, bytes]) -> bool:
    """One AGI() run, answering like Asterisk (GET VARIABLE from `variables`, SET VARIABLE, 510 otherwise)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(env)
    dialed = False
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            if line.startswith(b"GET VARIABLE "):
                value = variables.get(line[13:].strip())
                writer.write(b"200 result=1 (%s)\n" % value if value is not None else b"200 result=0\n")
            elif line.startswith(b"SET VARIABLE "):
                dialed = dialed or line.startswith(b"SET VARIABLE OPENDEEP_DIAL ")
                writer.write(b"200 result=1\n")
            else:
                writer.write(b"510 Invalid or unknown command\n")
    finally:
        writer.close()
    return dialed


async def _drive(port: int, calls: list[tuple[int, int]], concurrency: int) -> tuple[float, int]:
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

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, dialed


def _client_process(port, calls, concurrency, result_queue):
    result_queue.put(asyncio.run(_drive(port, calls, concurrency)))


def run_clients(port: int, calls: list[tuple[int, int]], concurrency: int) -> tuple[float, int]:
    results = multiprocessing.get_context("fork").Queue()
    process = multiprocessing.get_context("fork").Process(
        target=_client_process, args=(port, calls, concurrency, results))
    process.start()
    return process, results


# ---------------------------------------------------------------- panoramisk with the same route


class PanoramiskAgi:
    """Adapts panoramisk's Request to the small interface our routes use (env, get_variable, set_variable)."""

    def __init__(self, request):
        self.request = request
        script, query = split_script(request.headers.get("agi_network_script", ""))
        self.env = AgiEnvironment(variables=dict(request.headers), script=script, query=query)

    async def get_variable(self, name: str) -> str | None:
        reply = await self.request.send_command(f"GET VARIABLE {name}")
        result, data = reply.get("result", ("", ""))
        return data if result == "1" else None

    async def set_variable(self, name: str, value: str) -> None:
        await self.request.send_command(f"SET VARIABLE {name} {value}")


class MemoryRoutes(CallRoutes):
    """The same AGI dialog as call-start, decided from memory: what the servers cost without the database."""

    async def decide_call_start(self, call_id, user_id, agi_uniqueid=""):
        from fastagi_server.routes import CallStartDecision
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


# ---------------------------------------------------------------- the two servers


async def measure(name: str, kind: str, routes_cls, url: str, calls, concurrency: int) -> float:
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
    cpu_before = time.process_time()  # this process only: the server, with its SQLite threads
    process, results = run_clients(port, calls, concurrency)
    while True:  # keep serving until the client process reports
        await asyncio.sleep(0.05)
        if not results.empty():
            elapsed, dialed = results.get()
            break
    cpu = time.process_time() - cpu_before
    process.join()
    if kind == "ours":
        await server.stop()
    else:
        server.close()
        await server.wait_closed()
    await engine.dispose()
    rate = len(calls) / elapsed
    cpu_us = cpu / len(calls) * 1e6
    print(f"  {name:<50} {rate:6.0f} sessions/s   server CPU {cpu_us:5.0f} us/session   "
          f"({len(calls)} in {elapsed:.2f} s, {dialed} dialed)")
    CPU[name] = cpu_us
    assert dialed == len(calls), f"{name}: only {dialed} of {len(calls)} sessions got OPENDEEP_DIAL"
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"FastAGI call-start, {args.sessions} sessions, {args.concurrency} concurrent AGI clients (separate process)")
    with tempfile.TemporaryDirectory() as tmp:
        rates = {}
        for kind, label in (("ours", "ours (fastagi_server)"), ("panoramisk", "panoramisk fast_agi.Application")):
            url = f"sqlite+aiosqlite:///{tmp}/{kind}.db"
            calls = await seed(url, args.sessions, first_user=1 if kind == "ours" else 1000)
            rates[(kind, "db")] = await measure(f"{label}, route on SQLite", kind, CallRoutes, url, calls,
                                                args.concurrency)
        for kind, label in (("ours", "ours (fastagi_server)"), ("panoramisk", "panoramisk fast_agi.Application")):
            url = f"sqlite+aiosqlite:///{tmp}/{kind}.db"
            calls = [(index + 1, 1) for index in range(args.sessions)]
            rates[(kind, "mem")] = await measure(f"{label}, same dialog, no database", kind, MemoryRoutes, url,
                                                 calls, args.concurrency)
    db_ratio = rates[("ours", "db")] / rates[("panoramisk", "db")]
    mem_ratio = rates[("ours", "mem")] / rates[("panoramisk", "mem")]
    db_share = 1 - rates[("ours", "db")] / rates[("ours", "mem")]
    print(f"ratio ours/panoramisk: {db_ratio:.2f}x with SQLite, {mem_ratio:.2f}x without the database")
    print(f"share of our session time spent in the database transaction: {db_share:.0%}")
    print(f"goals: >= 3x panoramisk -> {'met' if db_ratio >= 3 else 'NOT met'}; "
          f">= 3000 sessions/s on SQLite -> {'met' if rates[('ours', 'db')] >= 3000 else 'NOT met'}")


if __name__ == "__main__":
    asyncio.run(main())
