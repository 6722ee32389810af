"""AudioSocket + call-AI benchmark: N concurrent synthetic calls against an echoing fake realtime model, all in
one process (one event loop, so one core): our server and bridges, the real `openai` SDK sessions, the fake
model and the Asterisk-like senders all share it.

Printed per N: frames per second (both directions), CPU use, p50/p99 lateness of outbound frames against their
20 ms grid slot, and the median added latency of the bridge: frame in -> model (socket read -> append sent),
model audio -> queued (event received -> decoded into the pacer), and queued -> frame out (the wait for the
next 20 ms slot, which includes the jitter buffer).

    .venv/bin/python bench/bench_audiosocket.py [--calls 50,200,500] [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audiosocket.server import AudioSocketServer  # noqa: E402
from db import repo  # noqa: E402
from db.engine import create_engine, session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.models import Call, CallStatus  # noqa: E402
from opendeep.events import EventHub  # noqa: E402
from opendeep.runtime import Runtime  # noqa: E402
from opendeep.settings import load_settings  # noqa: E402
from tests.doubles.audiosocket_client import speech_like  # noqa: E402
from tests.doubles.fake_realtime import FakeRealtime  # noqa: E402

WARMUP_SECONDS = 1.5


class AsteriskSide(asyncio.Protocol):
    """A cheap Asterisk stand-in: counts what arrives; the shared sender writes its audio frames."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.bytes_in = 0
        self.closed = asyncio.Event()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)

    def connection_lost(self, exc) -> None:
        self.closed.set()


async def send_frames(clients: list[AsteriskSide], audio: bytes, stop: asyncio.Event) -> int:
    """One 20 ms clock for all simulated channels (Asterisk's own timing is not what we measure)."""
    loop = asyncio.get_running_loop()
    frames = [b"\x10\x01\x40" + audio[i:i + 320] for i in range(0, len(audio) - 319, 320)]
    deadline = loop.time()
    sent = index = 0
    while not stop.is_set():
        frame = frames[index % len(frames)]
        index += 1
        for client in clients:
            if client.transport is not None and not client.transport.is_closing():
                client.transport.write(frame)
                sent += 1
        deadline += 0.020
        await asyncio.sleep(max(0.0, deadline - loop.time()))
    return sent


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(calls: int, seconds: float, workdir: Path) -> dict[str, float]:
    url = f"sqlite+aiosqlite:///{workdir / f'bench_{calls}.db'}"
    await upgrade(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    uuids = [str(uuid.uuid4()) for _ in range(calls)]
    async with sessions() as db, db.begin():
        user = await repo.create_user(db, f"bench{calls}", "x")
        campaign = await repo.create_campaign(db, user.id, name="bench")
        task = await repo.add_task(db, user.id, campaign.id, target_name="Echo", phone_number="+4930000000",
                                   objective="echo")
        for n, as_uuid in enumerate(uuids):
            db.add(Call(user_id=user.id, task_id=task.id, attempt_number=n + 1, status=CallStatus.ANSWERED,
                        dialed_number="+4930000000", channel=f"PJSIP/x-{n}", audiosocket_uuid=as_uuid))
    model = FakeRealtime(echo=True)
    base_url = await model.start()
    settings = load_settings({"DATABASE_URL": url, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "bench",
                              "MAX_CALL_SECONDS": "3600", "SILENCE_TIMEOUT_SECONDS": "3600"}, dotenv=None)
    runtime = Runtime(settings=settings, engine=engine, sessions=sessions, events=EventHub())
    server = AudioSocketServer(runtime, host="127.0.0.1", port=0, collect_stats=True)
    port = await server.start()
    loop = asyncio.get_running_loop()

    clients: list[AsteriskSide] = []
    gate = asyncio.Semaphore(50)

    async def connect(as_uuid: str) -> None:
        async with gate:
            _, side = await loop.create_connection(AsteriskSide, "127.0.0.1", port)
            side.transport.write(b"\x01\x00\x10" + uuid.UUID(as_uuid).bytes)
            clients.append(side)

    setup_started = time.perf_counter()
    await asyncio.gather(*(connect(u) for u in uuids))
    while len(model.connections) < calls:
        await asyncio.sleep(0.05)
    setup_seconds = time.perf_counter() - setup_started
    stop = asyncio.Event()
    sender = asyncio.create_task(send_frames(clients, speech_like(2.0, seed=7), stop))
    await asyncio.sleep(WARMUP_SECONDS)
    for stats in server.stats:   # measure the steady state only
        stats.lateness.clear(), stats.queue_delays.clear(), stats.inbound.clear(), stats.outbound.clear()
    bytes_before = sum(c.bytes_in for c in clients)
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    wall_started = time.perf_counter()
    await asyncio.sleep(seconds)
    wall = time.perf_counter() - wall_started
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    bytes_after = sum(c.bytes_in for c in clients)
    snapshot = [(list(s.lateness), list(s.queue_delays), list(s.inbound), list(s.outbound)) for s in server.stats]
    stop.set()
    await sender
    for client in clients:
        client.transport.close()
    await asyncio.gather(*(asyncio.wait_for(c.closed.wait(), 10) for c in clients), return_exceptions=True)
    await server.stop()
    await model.stop()
    await engine.dispose()

    lateness = [x for s in snapshot for x in s[0]]
    queue_delays = [x for s in snapshot for x in s[1]]
    inbound = [x for s in snapshot for x in s[2]]
    outbound = [x for s in snapshot for x in s[3]]
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    frames_out = (bytes_after - bytes_before) / 323
    return {
        "calls": calls, "setup_s": setup_seconds, "frames_out_s": frames_out / wall,
        "frames_in_s": len(inbound) / wall, "cpu_pct": 100 * cpu / wall,
        "late_p50_ms": 1000 * pct(lateness, 0.5), "late_p99_ms": 1000 * pct(lateness, 0.99),
        "late_max_ms": 1000 * max(lateness, default=float("nan")),
        "in_ms": 1000 * statistics.median(inbound) if inbound else float("nan"),
        "out_ms": 1000 * statistics.median(outbound) if outbound else float("nan"),
        "slot_ms": 1000 * statistics.median(queue_delays) if queue_delays else float("nan"),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="50,200,500")
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    header = (f"{'calls':>5} {'setup s':>7} {'out fr/s':>9} {'in fr/s':>9} {'CPU %':>6} {'late p50':>8} "
              f"{'late p99':>8} {'late max':>8} {'in->model':>9} {'model->q':>8} {'q->wire':>8}")
    print(f"AudioSocket bridge, echo model, {args.seconds:g} s measured after {WARMUP_SECONDS:g} s warm-up, "
          f"one event loop (pid {os.getpid()}); times in ms")
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for calls in (int(n) for n in args.calls.split(",")):
            r = await run(calls, args.seconds, Path(tmp))
            print(f"{r['calls']:>5} {r['setup_s']:>7.1f} {r['frames_out_s']:>9.0f} {r['frames_in_s']:>9.0f} "
                  f"{r['cpu_pct']:>6.0f} {r['late_p50_ms']:>8.2f} {r['late_p99_ms']:>8.2f} "
                  f"{r['late_max_ms']:>8.2f} {r['in_ms']:>9.3f} {r['out_ms']:>8.3f} {r['slot_ms']:>8.2f}",
                  flush=True)
    print("goal: 500 calls with p99 lateness < 5 ms on one core; median in->model and model->q < 1 ms "
          "(q->wire is the wait for the next 20 ms slot plus the jitter buffer, inherent to 20 ms framing)")


if __name__ == "__main__":
    asyncio.run(main())
