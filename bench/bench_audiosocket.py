"""AudioSocket + call-AI benchmark: N concurrent synthetic calls against an echoing fake realtime model.

Three processes, so that what is measured is OUR process only:

    this process     our AudioSocketServer: every call's CallBridge, pacer and real `openai` SDK session, on one
                     event loop (one core) -- this is the process whose CPU and lateness count
    --role model     tests/doubles/fake_realtime.py's FakeRealtime(echo=True): each input_audio_buffer.append
                     comes straight back as a response.output_audio.delta
    --role asterisk  N AudioSocket() channels: UUID frame, then a 320-byte slin frame every 20 ms per channel,
                     each channel on its own phase of the 20 ms period as real channels are (--aligned: all on
                     one phase, a worst case a real Asterisk does not produce); it records when each of our
                     frames arrives

Printed per N (times in ms):
  out fr/s     frames per second received by the Asterisk side (silence + echoed audio)
  in fr/s      frames per second read from the Asterisk side
  appends/s    input_audio_buffer.append per second that reached the model (fewer than frames with
               --catch-up N, when reads bring more than N frames at once, or with --input-chunk 2)
  CPU %        our process only (100 = one core); the fakes' CPU is shown separately
  late p50/p99/max   our side: when the pacer wrote each frame vs its slot on the 20 ms grid
  rx p99       Asterisk side: arrival of each frame vs the call's best-fit 20 ms grid (adds the fakes' and the
               kernel's scheduling on a shared 2-core machine)
  in->model    our added latency caller -> model: socket read -> append handed to the WebSocket
  model->q     our added latency model -> caller: WebSocket message received -> audio queued in the pacer
  q->wire      queued -> written: the wait for the call's next 20 ms slot (plus the jitter buffer after silence),
               inherent to 20 ms framing
  e2e          Asterisk side: a frame sent -> its echo received (both of our hops, the model's, the wait for
               the 20 ms slot and the jitter buffer)
  us/frame     our CPU per call per 20 ms (a frame in, a frame out), in microseconds; it falls as N grows,
               because a busier loop handles more sockets per wake-up
  model us/msg the fake model's CPU per append it echoes (websockets + JSON, no audio), for comparison

    .venv/bin/python bench/bench_audiosocket.py [--calls 50,200,500] [--seconds 6] [--aligned] [--one-timer]
                                                [--input-chunk 2] [--catch-up 3] [--uvloop] [--profile FILE]

The options only exist to compare alternatives; the defaults measure the code as shipped. A 500-call run puts
~2 cores of work (ours + the fakes) on the machine, so run it several times and read the median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audiosocket import bridge, pacing  # noqa: E402
from audiosocket.server import AudioSocketServer  # noqa: E402
from db import repo  # noqa: E402
from db.engine import create_engine, session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.models import Call, CallStatus  # noqa: E402
from opendeep.events import EventHub  # noqa: E402
from opendeep.runtime import Runtime  # noqa: E402
from opendeep.settings import load_settings  # noqa: E402
from tests.doubles.audiosocket_client import speech_like  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

WARMUP_SECONDS = 1.5
FRAME = 0.020
FRAME_WIRE = 3 + 320   # our outbound frames: header + 20 ms slin
AUDIO_HEADER = b"\x10\x01\x40"
# Frame numbers ride in the first two samples of each sent frame, as mu-law-exact values (codes 0..126 decode
# to distinct, negative levels), so the echo that comes back can be matched to the frame that caused it.
MARK_CODES = 127
_MARK_LEVELS = [audioop.ulaw2lin(bytes([code]), 2) for code in range(MARK_CODES)]   # 2-byte samples
_MARK_OF = {int.from_bytes(level, "little", signed=True): code for code, level in enumerate(_MARK_LEVELS)}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def reply(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------- the fake model


async def role_model() -> None:
    from tests.doubles.fake_realtime import FakeRealtime

    model = FakeRealtime(echo=True)
    reply({"base_url": await model.start()})
    commands = await stdin_lines()
    marked = cpu_seconds()
    appends = 0
    while line := (await commands.readline()).decode().strip():
        if line == "mark":
            marked = cpu_seconds()
            appends = sum(c.append_count for c in model.connections)
        elif line == "report":
            reply({"cpu": cpu_seconds() - marked, "connections": len(model.connections),
                   "appends": sum(c.append_count for c in model.connections) - appends})
        elif line == "stop":
            break
    await model.stop()


# ---------------------------------------------------------------------------------------------- the Asterisk side


class Channel(asyncio.Protocol):
    """One AudioSocket() channel: it sends what the shared clock gives it and times what arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = 0                 # bytes
        self.arrivals: list[float] = []   # per frame, while measuring
        self.round_trips: list[float] = []
        self.sent_at: dict[int, float] = {}
        self.measuring = False
        self.closed = asyncio.Event()
        self._partial = bytearray()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        before = self.received // FRAME_WIRE
        self.received += len(data)
        if not self.measuring:
            self._partial.clear()
            return
        frames = self.received // FRAME_WIRE - before
        self.arrivals.extend([now] * frames)
        buffer = self._partial
        buffer += data
        while len(buffer) >= FRAME_WIRE:
            mark = _MARK_OF.get(int.from_bytes(buffer[3:5], "little", signed=True)), \
                _MARK_OF.get(int.from_bytes(buffer[5:7], "little", signed=True))
            if None not in mark:
                sent = self.sent_at.pop(mark[0] * MARK_CODES + mark[1], None)
                if sent is not None:
                    self.round_trips.append(now - sent)
            del buffer[:FRAME_WIRE]

    def connection_lost(self, exc) -> None:
        self.closed.set()


def marked_frames(audio: bytes, count: int) -> list[bytes]:
    frames = []
    for index in range(count):
        start = (index * 320) % (len(audio) - 319)
        hi, lo = divmod(index % (MARK_CODES * MARK_CODES), MARK_CODES)
        frames.append(AUDIO_HEADER + _MARK_LEVELS[hi] + _MARK_LEVELS[lo] + audio[start + 4:start + 320])
    return frames


async def send_frames(channels: list[Channel], frames: list[bytes], aligned: bool, stop: asyncio.Event) -> None:
    """Each channel sends a frame every 20 ms on its own phase (like independent RTP streams), driven by 20
    phase timers, not N of them: the Asterisk side's own cost is not what we measure."""
    loop = asyncio.get_running_loop()
    phases = 1 if aligned else 20
    groups = [channels[p::phases] for p in range(phases)]
    started = loop.time() + 0.005
    sequence = [0] * phases

    def tick(phase: int, deadline: float) -> None:
        if stop.is_set():
            return
        index = sequence[phase]
        sequence[phase] += 1
        frame = frames[index % len(frames)]
        now = time.monotonic()
        key = index % (MARK_CODES * MARK_CODES)
        for channel in groups[phase]:
            transport = channel.transport
            if transport is not None and not transport.is_closing():
                transport.write(frame)
                if channel.measuring:
                    channel.sent_at[key] = now
        deadline += FRAME
        if loop.time() - deadline > FRAME:
            deadline = loop.time()
        loop.call_at(deadline, tick, phase, deadline)

    for phase in range(phases):
        start = started + phase * FRAME / phases
        loop.call_at(start, tick, phase, start)
    await stop.wait()


async def role_asterisk(port: int, aligned: bool) -> None:
    loop = asyncio.get_running_loop()
    commands = await stdin_lines()
    uuids = json.loads(await commands.readline())
    channels: list[Channel] = []
    gate = asyncio.Semaphore(50)

    async def connect(as_uuid: str) -> None:
        async with gate:
            _, channel = await loop.create_connection(Channel, "127.0.0.1", port)
            channel.transport.write(b"\x01\x00\x10" + uuid.UUID(as_uuid).bytes)
            channels.append(channel)

    await asyncio.gather(*(connect(u) for u in uuids))
    reply({"connected": len(channels)})
    stop = asyncio.Event()
    sender: asyncio.Task | None = None
    marked = cpu_seconds()
    frames = marked_frames(speech_like(2.0, seed=7), 500)
    while line := (await commands.readline()).decode().strip():
        if line == "go":
            sender = asyncio.create_task(send_frames(channels, frames, aligned, stop))
        elif line == "mark":
            marked = cpu_seconds()
            for channel in channels:
                channel.arrivals.clear()
                channel.round_trips.clear()
                channel.sent_at.clear()
                channel.measuring = True
        elif line == "report":
            cpu = cpu_seconds() - marked
            for channel in channels:
                channel.measuring = False
            lateness: list[float] = []
            gaps: list[float] = []
            for channel in channels:
                times = channel.arrivals
                if len(times) < 2:
                    continue
                anchor = min(t - k * FRAME for k, t in enumerate(times))
                lateness.extend(t - k * FRAME - anchor for k, t in enumerate(times))
                gaps.extend(b - a for a, b in zip(times, times[1:], strict=False))
            trips = [x for channel in channels for x in channel.round_trips]
            reply({"cpu": cpu, "frames": sum(len(c.arrivals) for c in channels),
                   "rx_p50": pct(lateness, 0.5), "rx_p99": pct(lateness, 0.99),
                   "gap_max": max(gaps, default=float("nan")), "bursts": sum(1 for g in gaps if g < 0.005),
                   "e2e_p50": pct(trips, 0.5), "e2e_p99": pct(trips, 0.99), "echoes": len(trips)})
        elif line == "stop":
            break
    stop.set()
    if sender is not None:
        await sender
    for channel in channels:
        channel.transport.close()
    await asyncio.gather(*(asyncio.wait_for(c.closed.wait(), 10) for c in channels), return_exceptions=True)


# ---------------------------------------------------------------------------------------------- our process


class Child:
    """A helper process speaking JSON lines on stdout, commands on stdin."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, *args: str) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), *args, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        return cls(process)

    def send(self, line: str) -> None:
        self.process.stdin.write(line.encode() + b"\n")

    async def answer(self, timeout: float = 120) -> dict[str, Any]:
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"bench helper {self.process.pid} exited ({await self.process.wait()})")
        return json.loads(line)

    async def ask(self, line: str) -> dict[str, Any]:
        self.send(line)
        return await self.answer()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.send("stop")
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def seed(url: str, calls: int) -> list[str]:
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
    await engine.dispose()
    return uuids


async def run(calls: int, seconds: float, workdir: Path, aligned: bool, profile: str | None) -> dict[str, float]:
    url = f"sqlite+aiosqlite:///{workdir / f'bench_{calls}_{time.monotonic_ns()}.db'}"
    uuids = await seed(url, calls)
    engine = create_engine(url)
    model = await Child.start("--role", "model")
    base_url = (await model.answer())["base_url"]
    settings = load_settings({"DATABASE_URL": url, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "bench",
                              "MAX_CALL_SECONDS": "3600", "SILENCE_TIMEOUT_SECONDS": "3600"}, dotenv=None)
    runtime = Runtime(settings=settings, engine=engine, sessions=session_factory(engine), events=EventHub())
    server = AudioSocketServer(runtime, host="127.0.0.1", port=0, collect_stats=True)
    port = await server.start()
    asterisk = await Child.start("--role", "asterisk", "--port", str(port), *(["--aligned"] if aligned else []))
    setup_started = time.perf_counter()
    asterisk.send(json.dumps(uuids))
    await asterisk.answer()
    give_up = time.perf_counter() + 120
    while sum(1 for b in server.bridges if b.model is not None) < calls:
        if time.perf_counter() > give_up or asterisk.process.returncode is not None:
            raise RuntimeError(f"only {len(server.bridges)} of {calls} calls came up")
        await asyncio.sleep(0.05)
    setup_seconds = time.perf_counter() - setup_started
    asterisk.send("go")
    await asyncio.sleep(WARMUP_SECONDS)

    for stats in server.stats:   # measure the steady state only
        stats.lateness.clear(), stats.queue_delays.clear(), stats.inbound.clear(), stats.outbound.clear()
    asterisk.send("mark")
    model.send("mark")
    frames_in_before = sum(b.frames_in for b in server.bridges)
    profiler = None
    if profile:
        import cProfile
        profiler = cProfile.Profile(time.process_time)   # CPU time: preemption by other processes excluded
        profiler.enable()
    cpu_before = cpu_seconds()
    wall_started = time.perf_counter()
    await asyncio.sleep(seconds)
    wall = time.perf_counter() - wall_started
    cpu = cpu_seconds() - cpu_before
    frames_in = sum(b.frames_in for b in server.bridges) - frames_in_before
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(f"{profile}.{calls}")
    snapshot = [(list(s.lateness), list(s.queue_delays), list(s.inbound), list(s.outbound)) for s in server.stats]
    received = await asterisk.ask("report")
    model_side = await model.ask("report")
    await asterisk.stop()
    await server.stop()
    await model.stop()
    await engine.dispose()

    lateness = [x for s in snapshot for x in s[0]]
    queue_delays = [x for s in snapshot for x in s[1]]
    inbound = [x for s in snapshot for x in s[2]]
    outbound = [x for s in snapshot for x in s[3]]
    return {
        "calls": calls, "setup_s": setup_seconds, "frames_out_s": received["frames"] / wall,
        "frames_in_s": frames_in / wall, "appends_s": model_side["appends"] / wall, "cpu_pct": 100 * cpu / wall,
        "model_cpu_pct": 100 * model_side["cpu"] / wall, "asterisk_cpu_pct": 100 * received["cpu"] / wall,
        "late_p50_ms": 1000 * pct(lateness, 0.5), "late_p99_ms": 1000 * pct(lateness, 0.99),
        "late_max_ms": 1000 * max(lateness, default=float("nan")),
        "rx_p99_ms": 1000 * received["rx_p99"], "gap_max_ms": 1000 * received["gap_max"],
        "bursts": received["bursts"],
        "in_ms": 1000 * statistics.median(inbound) if inbound else float("nan"),
        "out_ms": 1000 * statistics.median(outbound) if outbound else float("nan"),
        "slot_ms": 1000 * statistics.median(queue_delays) if queue_delays else float("nan"),
        "e2e_ms": 1000 * received["e2e_p50"],
        # CPU per 20 ms of one call (a frame in, a frame out): ours, and the fake model's per append it echoes
        "cpu_us_frame": 1e6 * cpu / frames_in if frames_in else float("nan"),
        "model_us_msg": 1e6 * model_side["cpu"] / model_side["appends"] if model_side["appends"] else float("nan"),
    }


COLUMNS = [  # (heading, key, format of the value)
    ("calls", "calls", "d"), ("setup s", "setup_s", ".1f"), ("out fr/s", "frames_out_s", ".0f"),
    ("in fr/s", "frames_in_s", ".0f"), ("appends/s", "appends_s", ".0f"), ("CPU %", "cpu_pct", ".0f"),
    ("late p50", "late_p50_ms", ".2f"),
    ("late p99", "late_p99_ms", ".2f"), ("late max", "late_max_ms", ".2f"), ("rx p99", "rx_p99_ms", ".2f"),
    ("gap max", "gap_max_ms", ".1f"), ("bursts", "bursts", "d"), ("in->model", "in_ms", ".3f"),
    ("model->q", "out_ms", ".3f"), ("q->wire", "slot_ms", ".1f"), ("e2e", "e2e_ms", ".1f"),
    ("model CPU", "model_cpu_pct", ".0f"), ("ast CPU", "asterisk_cpu_pct", ".0f"),
    ("us/frame", "cpu_us_frame", ".0f"), ("model us/msg", "model_us_msg", ".0f"),
]


def format_header() -> str:
    return " ".join(f"{head:>{max(len(head), 5)}}" for head, _, _ in COLUMNS)


def format_row(result: dict[str, float]) -> str:
    return " ".join(f"{result[key]:>{max(len(head), 5)}{spec}}" for head, key, spec in COLUMNS)


async def main(args: argparse.Namespace) -> None:
    if args.role == "model":
        await role_model()
        return
    if args.role == "asterisk":
        await role_asterisk(args.port, args.aligned)
        return
    logging.basicConfig(level=logging.WARNING)
    bridge.INPUT_CHUNK_FRAMES = args.input_chunk
    bridge.CATCH_UP_FRAMES = args.catch_up
    if args.one_timer:
        pacing.PHASE_SECONDS = pacing.FRAME_SECONDS
    loop_kind = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"AudioSocket bridge, echo model, {loop_kind} loop, {args.seconds:g} s measured after {WARMUP_SECONDS:g} "
          f"s warm-up; our "
          f"process (pid {os.getpid()}) runs every call on one event loop; fake model and Asterisk side in their "
          f"own processes; {'all channels on one 20 ms phase' if args.aligned else 'channels on spread phases'}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; times in ms")
    print(format_header())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for calls in (int(n) for n in args.calls.split(",")):
            results.append(await run(calls, args.seconds, Path(tmp), args.aligned, args.profile))
            print(format_row(results[-1]), flush=True)
    within = [r["calls"] for r in results if r["late_p99_ms"] < 5]
    print(f"late p99 < 5 ms held up to {max(within) if within else 'none'} of the N run")
    print("goal: 500 calls with late p99 < 5 ms on one core; median in->model and model->q < 1 ms "
          "(q->wire is the wait for the next 20 ms slot plus the jitter buffer, inherent to 20 ms framing)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="50,200,500")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--aligned", action="store_true", help="all channels send on the same 20 ms phase")
    parser.add_argument("--one-timer", action="store_true",
                        help="one shared timer for all calls (audiosocket.pacing.PHASE_SECONDS = 20 ms)")
    parser.add_argument("--input-chunk", type=int, default=getattr(bridge, "INPUT_CHUNK_FRAMES", 1),
                        help="20 ms frames per append to the model (audiosocket.bridge.INPUT_CHUNK_FRAMES)")
    parser.add_argument("--catch-up", type=int, default=getattr(bridge, "CATCH_UP_FRAMES", 0),
                        help="frames in one read above which they go as one append (0: never; "
                             "audiosocket.bridge.CATCH_UP_FRAMES)")
    parser.add_argument("--uvloop", action="store_true",
                        help="run our process on uvloop (not a dependency of OpenDeep; for comparison only)")
    parser.add_argument("--profile", help="cProfile our process while measuring; writes FILE.<calls>")
    parser.add_argument("--role", choices=["bench", "model", "asterisk"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.uvloop and arguments.role == "bench":
        import uvloop  # not installed with OpenDeep: pip install uvloop (or put it on PYTHONPATH) to compare
        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
