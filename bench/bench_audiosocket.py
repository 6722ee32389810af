"""AudioSocket + call-AI benchmark: N concurrent calls through `opendeep serve`'s AudioSocket server, with the
real `openai` SDK session per call, against a fake realtime model that echoes in realistic 100 ms deltas.

Three processes, so that what is measured is OUR process only, each pinned to its own core (2 cores or more):

    this process     AudioSocketServer exactly as `opendeep serve --only audiosocket` runs it (built from settings;
                     nothing patched), every call's bridge on one event loop; pinned to CPU 0
    --role model     a lean fake Realtime server (asyncio.Protocol, thin RFC 6455 framing, no JSON parse of
                     appends): it answers the SDK's handshake and control events and echoes the callee's audio
                     back as `response.output_audio.delta` of 800 bytes of G.711 = 100 ms each. Real Realtime
                     sessions send deltas of 100 ms (4,800 bytes of 24 kHz pcm16, as reported in issue 17 from
                     public traces; 800 bytes in audio/pcmu, which we use). --talk 0.5 (default): it echoes every
                     other 100 ms block, as a model that speaks half the time; 1.0: it never stops.
    --role asterisk  N AudioSocket channels: UUID frame, then a 320-byte slin frame every 20 ms per channel, each
                     channel on its own phase of the 20 ms period as real channels are; 20 timers, not N.
    (model and asterisk share CPU 1.)

Every frame the Asterisk side sends carries a mark (its channel and number, in its first three samples, exact
through mu-law), so latencies are measured from outside our process, on the machine's one monotonic clock:

  in->model    the Asterisk side wrote a frame -> the model received the append holding it (our read, the mu-law
               and base64 work, our write, the kernel both ways; with AUDIOSOCKET_FRAMES_PER_APPEND=2 also the
               wait of every other frame for its partner, 20 ms)
  model->wire  the model wrote a delta -> the Asterisk side received its first frame, for deltas that start
               after silence. This includes the wait for the call's next 20 ms slot (uniform 0-20 ms, median
               10 ms), inherent to 20 ms framing: our added latency is about this minus 10 ms.
  rx p99 / gap max   Asterisk side: each frame's arrival against the call's best-fit 20 ms grid, and the longest
               time between two frames of a call (Asterisk hangs up after 2 s without one)
  late p99     our side: the FRAME_LATENESS metric (opendeep_audiosocket_frame_lateness_seconds), p99 as the
               upper bound of its bucket
  us/call      our CPU (getrusage: user + system) per call per 20 ms (one frame in, one out): robust to the
               machine's load, unlike the times above
  waited %     the time our process was ready to run but waited for CPU 0 (/proc schedstat): other processes
               on the machine; pacing figures measured while this is high are the machine's, not ours
  fr/read      frames per socket read of ours: 1.00 when our process keeps up; above 1 it fell behind (the
               machine is loaded) and batched reads make us/call look cheaper than it is
  model / ast  the fake model's and the Asterisk side's own CPU, % of a core

    .venv/bin/python bench/bench_audiosocket.py [--calls 50,200] [--seconds 5] [--frames-per-append 1]
                                                [--talk 0.5] [--tls] [--workers 2] [--profile FILE]

--workers 2 runs two AudioSocket processes on one address (AUDIOSOCKET_REUSE_PORT), each pinned to its own core,
with the model and Asterisk side sharing the cores with them (a 2-core machine has no third).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import hashlib
import json
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from websockets.speedups import apply_mask  # noqa: E402

from audiosocket.server import AudioSocketServer  # noqa: E402
from db import repo  # noqa: E402
from db.engine import create_engine, session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.models import Call, CallStatus  # noqa: E402
from opendeep.events import EventHub  # noqa: E402
from opendeep.metrics import FRAME_LATENESS  # noqa: E402
from opendeep.runtime import Runtime  # noqa: E402
from opendeep.settings import load_settings  # noqa: E402
from tests.doubles.audiosocket_client import speech_like  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

WARMUP_SECONDS = 1.5
FRAME = 0.020
FRAME_WIRE = 3 + 320   # one AudioSocket audio frame: header + 20 ms slin
AUDIO_HEADER = b"\x10\x01\x40"
DELTA_BYTES = 800      # 100 ms of G.711
MULAW_FRAME = 160
# Marks: three mu-law codes 0..126 (they decode to distinct negative levels and encode back exactly).
CODES = 127
CYCLE = 500            # frame numbers repeat every 10 s: far longer than any latency measured
_LEVELS = [audioop.ulaw2lin(bytes([code]), 2) for code in range(CODES)]
_CODE_OF = {int.from_bytes(level, "little", signed=True): code for code, level in enumerate(_LEVELS)}
ANCHORS = ("AVA (asterisk-ai-voice-agent) 5-10 % of a core per call; Pipecat about 20 %; LiveKit about 16 % "
           "(published figures, issue 17)")


def mark_bytes(mark: int) -> bytes:
    a, rest = divmod(mark, CODES * CODES)
    b, c = divmod(rest, CODES)
    return _LEVELS[a] + _LEVELS[b] + _LEVELS[c]


def mark_of_slin(payload: bytes | bytearray | memoryview, at: int) -> int | None:
    codes = [_CODE_OF.get(int.from_bytes(payload[at + 2 * i:at + 2 * i + 2], "little", signed=True))
             for i in range(3)]
    if None in codes:
        return None
    return (codes[0] * CODES + codes[1]) * CODES + codes[2]   # type: ignore[operator]


def mark_of_mulaw(data: bytes, at: int) -> int | None:
    a, b, c = data[at], data[at + 1], data[at + 2]
    if a >= CODES or b >= CODES or c >= CODES:
        return None
    return (a * CODES + b) * CODES + c


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_split() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def runqueue_wait() -> float:
    """Seconds our main thread has waited, runnable, for a CPU (the kernel's schedstat): the machine's load."""
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


async def stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def reply(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------- the fake model

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_APPEND = b'{"type":"input_audio_buffer.append","audio":"'
_DELTA_HEAD = (b'{"type":"response.output_audio.delta","response_id":"resp_echo","item_id":"item_echo",'
               b'"output_index":0,"content_index":0,"delta":"')


def server_frame(payload: bytes, opcode: int = 1) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes([0x80 | opcode, size]) + payload
    if size < 65536:
        return bytes([0x80 | opcode, 126]) + size.to_bytes(2, "big") + payload
    return bytes([0x80 | opcode, 127]) + size.to_bytes(8, "big") + payload


class ModelSession(asyncio.Protocol):
    """One SDK connection to the lean fake model: handshake, then thin frames."""

    def __init__(self, model: LeanModel) -> None:
        self.model = model
        self.transport: Any = None
        self.buffer = bytearray()
        self.open = False
        self.pending = bytearray()   # echoed mu-law not yet sent
        self.block = 0               # 100 ms blocks seen (every other one is echoed with --talk 0.5)
        self.appends = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.model.sessions.append(self)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).decode("latin-1")
            del buffer[:end + 4]
            key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                       if line.lower().startswith("sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
            self.transport.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                  f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
            self.open = True
            self.send(b'{"type":"session.created","session":{"type":"realtime"}}')
        while len(buffer) >= 6:
            opcode, size = buffer[0] & 0x0F, buffer[1] & 0x7F
            at = 2
            if size == 126:
                size, at = int.from_bytes(buffer[2:4], "big"), 4
            elif size == 127:
                size, at = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < at + 4 + size:
                return
            payload = apply_mask(bytes(buffer[at + 4:at + 4 + size]), bytes(buffer[at:at + 4]))
            del buffer[:at + 4 + size]
            if opcode == 1:
                self.on_message(payload)
            elif opcode == 8:
                self.transport.write(server_frame(payload[:2], 8))
                self.transport.close()
                return
            elif opcode == 9:
                self.transport.write(server_frame(payload, 10))

    def send(self, payload: bytes) -> None:
        self.transport.write(server_frame(payload))

    def on_message(self, message: bytes) -> None:
        if message.startswith(_APPEND):
            self.appends += 1
            audio = base64.b64decode(message[len(_APPEND):-2])
            model = self.model
            if model.measuring:
                now = time.monotonic()
                for at in range(0, len(audio) - 2, MULAW_FRAME):
                    mark = mark_of_mulaw(audio, at)
                    if mark is not None:
                        model.received.append((mark, now))
            pending = self.pending
            pending += audio
            while len(pending) >= DELTA_BYTES:
                block = bytes(pending[:DELTA_BYTES])
                del pending[:DELTA_BYTES]
                self.block += 1
                if (self.block * model.talk) % 1 >= model.talk:
                    continue   # the model is silent for this 100 ms
                self.send(_DELTA_HEAD + base64.b64encode(block) + b'"}')
                model.deltas += 1
                if model.measuring:
                    mark = mark_of_mulaw(block, 0)
                    if mark is not None:
                        model.delta_sent.append((mark, time.monotonic()))
            return
        event = json.loads(message)
        type_ = event.get("type")
        if type_ == "session.update":
            self.send(json.dumps({"type": "session.updated", "session": event.get("session", {})}).encode())
        elif type_ == "response.create":   # the greeting: nothing to say, the echo does the talking
            self.send(b'{"type":"response.created","response":{"id":"resp_1","status":"in_progress"}}')
            self.send(b'{"type":"response.done","response":{"id":"resp_1","status":"completed","output":[]}}')

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False


class LeanModel:
    def __init__(self, talk: float) -> None:
        self.talk = talk
        self.sessions: list[ModelSession] = []
        self.measuring = False
        self.received: list[tuple[int, float]] = []
        self.delta_sent: list[tuple[int, float]] = []
        self.deltas = 0


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "model.pem", folder / "model.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    return cert, key


async def role_model(talk: float, cpu: int | None, tls_dir: str | None) -> None:
    pin(cpu)
    loop = asyncio.get_running_loop()
    model = LeanModel(talk)
    context = None
    if tls_dir:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(Path(tls_dir) / "model.pem", Path(tls_dir) / "model.key")
    server = await loop.create_server(lambda: ModelSession(model), "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    reply({"base_url": f"{'https' if tls_dir else 'http'}://127.0.0.1:{port}/v1"})
    commands = await stdin_lines()
    marked = cpu_seconds()
    appends = deltas = 0
    while line := (await commands.readline()).decode().strip():
        if line == "mark":
            marked = cpu_seconds()
            appends, deltas = sum(s.appends for s in model.sessions), model.deltas
            model.received.clear(), model.delta_sent.clear()
            model.measuring = True
        elif line == "report":
            model.measuring = False
            reply({"cpu": cpu_seconds() - marked, "connections": len(model.sessions),
                   "appends": sum(s.appends for s in model.sessions) - appends, "deltas": model.deltas - deltas,
                   "received": model.received, "delta_sent": model.delta_sent})
        elif line == "stop":
            break
    server.close()


# ---------------------------------------------------------------------------------------------- the Asterisk side


class Channel(asyncio.Protocol):
    """One AudioSocket channel: it sends what the shared clock gives it and times what arrives."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.received = 0                 # bytes
        self.arrivals: list[float] = []   # per frame, while measuring
        self.marks: list[tuple[int, float]] = []
        self.measuring = False
        self.closed = asyncio.Event()
        self._partial = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.measuring:
            self._partial.clear()
            self.received += len(data)
            return
        buffer = self._partial
        buffer += data
        while len(buffer) >= FRAME_WIRE:
            self.arrivals.append(now)
            mark = mark_of_slin(buffer, 3)
            if mark is not None:
                self.marks.append((mark, now))
            del buffer[:FRAME_WIRE]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


async def send_frames(channels: list[Channel], stop: asyncio.Event, sent: dict[int, float]) -> None:
    """Each channel sends a frame every 20 ms on its own phase (like independent RTP streams), driven by 20
    phase timers. Frame k of channel i carries mark i * CYCLE + k % CYCLE; `sent` gets its tick's start time."""
    loop = asyncio.get_running_loop()
    phases = 20
    audio = speech_like(2.0, seed=7)
    bodies = [audio[(k * 320) % (len(audio) - 320) + 6:(k * 320) % (len(audio) - 320) + 320] for k in range(CYCLE)]
    marks = [mark_bytes(i) for i in range(len(channels) * CYCLE)] if len(channels) * CYCLE < CODES ** 3 else []
    groups = [list(range(p, len(channels), phases)) for p in range(phases)]
    started = loop.time() + 0.005
    sequence = [0] * phases

    def tick(phase: int, deadline: float) -> None:
        if stop.is_set():
            return
        k = sequence[phase] % CYCLE
        sequence[phase] += 1
        body = bodies[k]
        now = time.monotonic()
        for i in groups[phase]:
            transport = channels[i].transport
            if transport is not None and not transport.is_closing():
                mark = i * CYCLE + k
                transport.write(AUDIO_HEADER + marks[mark] + body)
                sent[mark] = now
        deadline += FRAME
        if loop.time() - deadline > FRAME:
            deadline = loop.time()
        loop.call_at(deadline, tick, phase, deadline)

    for phase in range(phases):
        start = started + phase * FRAME / phases
        loop.call_at(start, tick, phase, start)
    await stop.wait()


async def role_asterisk(port: int, cpu: int | None) -> None:
    pin(cpu)
    loop = asyncio.get_running_loop()
    commands = await stdin_lines()
    uuids = json.loads(await commands.readline())
    channels: list[Channel] = []
    gate = asyncio.Semaphore(50)

    async def connect(as_uuid: str) -> Channel:
        async with gate:
            _, channel = await loop.create_connection(Channel, "127.0.0.1", port)
            channel.transport.write(b"\x01\x00\x10" + uuid.UUID(as_uuid).bytes)
            return channel

    channels = list(await asyncio.gather(*(connect(u) for u in uuids)))
    reply({"connected": len(channels)})
    stop = asyncio.Event()
    sender: asyncio.Task[None] | None = None
    marked = cpu_seconds()
    sent: dict[int, float] = {}
    sent_window: dict[int, float] = {}
    while line := (await commands.readline()).decode().strip():
        if line == "go":
            sender = asyncio.create_task(send_frames(channels, stop, sent))
        elif line == "mark":
            marked = cpu_seconds()
            sent.clear()
            for channel in channels:
                channel.arrivals.clear()
                channel.marks.clear()
                channel.measuring = True
        elif line == "report":
            cpu = cpu_seconds() - marked
            sent_window = dict(sent)
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
            first_arrival: dict[int, float] = {}
            for channel in channels:
                for mark, at in channel.marks:
                    first_arrival.setdefault(mark, at)
            reply({"cpu": cpu, "frames": sum(len(c.arrivals) for c in channels),
                   "rx_p50": pct(lateness, 0.5), "rx_p99": pct(lateness, 0.99),
                   "gap_max": max(gaps, default=float("nan")), "gap_p99": pct(gaps, 0.99),
                   "gap_p50": pct(gaps, 0.5), "bursts": sum(1 for g in gaps if g < 0.005),
                   "sent": sent_window, "arrived": first_arrival})
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
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), *args, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, limit=256 * 1024 * 1024, env=env)
        return cls(process)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")

    async def answer(self, timeout: float = 120) -> dict[str, Any]:
        assert self.process.stdout is not None
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
            assert self.process.stdin is not None
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


def lateness_buckets() -> dict[float, float]:
    """FRAME_LATENESS's cumulative bucket counts (upper bound -> count)."""
    return {float(s.labels["le"]): s.value for metric in FRAME_LATENESS.collect() for s in metric.samples
            if s.name.endswith("_bucket")}


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    counts = {le: after[le] - before.get(le, 0.0) for le in after}
    total = counts.get(float("inf"), 0.0)
    if not total:
        return float("nan")
    for le in sorted(counts):
        if counts[le] >= q * total:
            return le
    return float("inf")


def settings_env(url: str, base_url: str, frames_per_append: int, reuse_port: bool, port: int) -> dict[str, str]:
    return {"DATABASE_URL": url, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "bench",
            "MAX_CALL_SECONDS": "3600", "SILENCE_TIMEOUT_SECONDS": "3600", "LOG_LEVEL": "WARNING",
            "AUDIOSOCKET_BIND": f"127.0.0.1:{port}", "AUDIOSOCKET_FRAMES_PER_APPEND": str(frames_per_append),
            "AUDIOSOCKET_REUSE_PORT": "true" if reuse_port else "false"}


async def serve_audiosocket(env: dict[str, str]) -> AudioSocketServer:
    """The AudioSocket part as `opendeep serve --only audiosocket` builds it: settings -> Runtime -> server."""
    settings = load_settings(env, dotenv=None)
    engine = create_engine(settings.database_url)
    runtime = Runtime(settings=settings, engine=engine, sessions=session_factory(engine), events=EventHub())
    server = AudioSocketServer(runtime)
    await server.start()
    return server


async def role_worker(env_json: str, cpu: int | None) -> None:
    """A second AudioSocket process on the same address (--workers 2)."""
    pin(cpu)
    server = await serve_audiosocket(json.loads(env_json))
    reply({"port": server.port})
    commands = await stdin_lines()
    marked, before = cpu_split(), lateness_buckets()
    frames_before = reads_before = 0
    while line := (await commands.readline()).decode().strip():
        if line == "calls":
            reply({"calls": sum(1 for b in server.bridges if b.model is not None)})
        elif line == "mark":
            marked, before = cpu_split(), lateness_buckets()
            frames_before = sum(b.frames_in for b in server.bridges)
            reads_before = sum(b.reads_in for b in server.bridges)
        elif line == "report":
            user, system = cpu_split()
            after = lateness_buckets()
            reply({"user": user - marked[0], "system": system - marked[1],
                   "frames_in": sum(b.frames_in for b in server.bridges) - frames_before,
                   "reads": sum(b.reads_in for b in server.bridges) - reads_before,
                   "calls": len(server.bridges), "late_p99": bucket_quantile(before, after, 0.99)})
        elif line == "stop":
            break
    await server.stop()


async def run(calls: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    two_cores = (os.cpu_count() or 1) >= 2
    ours, theirs = (0, 1) if two_cores else (None, None)
    if args.workers > 1:
        theirs = None   # the workers take both cores; the fakes go where the kernel puts them
    url = f"sqlite+aiosqlite:///{workdir / f'bench_{calls}_{time.monotonic_ns()}.db'}"
    uuids = await seed(url, calls)
    child_env = dict(os.environ)
    tls_dir = None
    if args.tls:
        tls_dir = str(workdir)
        cert, _ = self_signed_certificate(workdir)
        os.environ["SSL_CERT_FILE"] = str(cert)   # our SDK client trusts the fake model's certificate
    model = await Child.start("--role", "model", "--talk", str(args.talk),
                              *(["--cpu", str(theirs)] if theirs is not None else []),
                              *(["--tls-dir", tls_dir] if tls_dir else []), env=child_env)
    base_url = (await model.answer())["base_url"]
    pin(ours)
    with socket.socket() as probe:   # a free port for AUDIOSOCKET_BIND
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = settings_env(url, base_url, args.frames_per_append, args.workers > 1, port)
    server = await serve_audiosocket(env)
    workers: list[Child] = []
    for n in range(1, args.workers):
        workers.append(await Child.start("--role", "worker", "--env", json.dumps({**env,
                                         "AUDIOSOCKET_BIND": f"127.0.0.1:{server.port}"}),
                                         *(["--cpu", str(n % 2)] if two_cores else []), env=child_env))
        await workers[-1].answer()
    asterisk = await Child.start("--role", "asterisk", "--port", str(server.port),
                                 *(["--cpu", str(theirs)] if theirs is not None else []), env=child_env)
    setup_started = time.perf_counter()
    asterisk.send(json.dumps(uuids))
    await asterisk.answer()
    give_up = time.perf_counter() + 120

    async def bridged() -> int:
        ours_up = sum(1 for b in server.bridges if b.model is not None)
        return ours_up + sum([(await w.ask("calls"))["calls"] for w in workers])

    while await bridged() < calls:
        if time.perf_counter() > give_up or asterisk.process.returncode is not None:
            raise RuntimeError(f"only {await bridged()} of {calls} calls came up")
        await asyncio.sleep(0.1)
    setup_seconds = time.perf_counter() - setup_started
    asterisk.send("go")
    await asyncio.sleep(WARMUP_SECONDS)

    asterisk.send("mark")
    model.send("mark")
    for worker in workers:
        worker.send("mark")
    frames_in_before = sum(b.frames_in for b in server.bridges)
    reads_before = sum(b.reads_in for b in server.bridges)
    buckets_before = lateness_buckets()
    profiler = None
    if args.profile:
        import cProfile
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
    user_before, system_before = cpu_split()
    waited_before = runqueue_wait()
    wall_started = time.perf_counter()
    load = os.getloadavg()[0]
    await asyncio.sleep(args.seconds)
    wall = time.perf_counter() - wall_started
    user_after, system_after = cpu_split()
    waited = runqueue_wait() - waited_before
    frames_in = sum(b.frames_in for b in server.bridges) - frames_in_before
    reads = sum(b.reads_in for b in server.bridges) - reads_before
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(f"{args.profile}.{calls}")
    late_p99 = bucket_quantile(buckets_before, lateness_buckets(), 0.99)
    split = str(len(server.bridges))
    received = await asterisk.ask("report")
    model_side = await model.ask("report")
    worker_reports = [await w.ask("report") for w in workers]
    for worker in workers:
        await worker.stop()
    await asterisk.stop()
    await server.stop()
    await model.stop()
    await server.runtime.engine.dispose()
    os.environ.pop("SSL_CERT_FILE", None)

    # Latencies from the marks: in->model per frame, model->wire per delta that starts after silence.
    sent = {int(k): v for k, v in received["sent"].items()}
    arrived = {int(k): v for k, v in received["arrived"].items()}
    inbound = [at - sent[mark] for mark, at in model_side["received"] if mark in sent and at >= sent[mark]]
    outbound = [arrived[mark] - at for mark, at in model_side["delta_sent"] if mark in arrived and arrived[mark] >= at]
    user, system = user_after - user_before, system_after - system_before
    split = "/".join([split, *(str(report["calls"]) for report in worker_reports)])
    for report in worker_reports:
        user += report["user"]
        system += report["system"]
        frames_in += report["frames_in"]
        reads += report["reads"]
        late_p99 = max(late_p99, report["late_p99"])
    per_frame = 1e6 / frames_in if frames_in else float("nan")
    return {
        "calls": calls, "workers": args.workers, "split": split, "setup_s": setup_seconds, "load": load,
        "per_read": frames_in / reads if reads else float("nan"),
        "frames_out_s": received["frames"] / wall, "frames_in_s": frames_in / wall,
        "appends_s": model_side["appends"] / wall, "deltas_s": model_side["deltas"] / wall,
        "cpu_pct": 100 * (user + system) / wall, "wait_pct": 100 * waited / wall,
        "us_call": (user + system) * per_frame, "us_user": user * per_frame, "us_sys": system * per_frame,
        "late_p99_ms": 1000 * late_p99, "rx_p99_ms": 1000 * received["rx_p99"],
        "gap_max_ms": 1000 * received["gap_max"], "bursts": received["bursts"],
        "in_p50_ms": 1000 * pct(inbound, 0.5), "in_p99_ms": 1000 * pct(inbound, 0.99),
        "in_mean_ms": 1000 * statistics.fmean(inbound) if inbound else float("nan"),
        "out_p50_ms": 1000 * pct(outbound, 0.5),
        "model_pct": 100 * model_side["cpu"] / wall, "ast_pct": 100 * received["cpu"] / wall,
    }


COLUMNS = [  # (heading, key, format of the value)
    ("calls", "calls", "d"), ("procs", "workers", "d"), ("calls each", "split", "s"),
    ("load", "load", ".1f"), ("CPU %", "cpu_pct", ".0f"),
    ("waited %", "wait_pct", ".0f"),
    ("us/call", "us_call", ".1f"), ("fr/read", "per_read", ".2f"), ("user", "us_user", ".1f"), ("sys", "us_sys", ".1f"),
    ("out fr/s", "frames_out_s", ".0f"), ("appends/s", "appends_s", ".0f"), ("deltas/s", "deltas_s", ".0f"),
    ("late p99", "late_p99_ms", ".1f"), ("rx p99", "rx_p99_ms", ".2f"), ("gap max", "gap_max_ms", ".1f"),
    ("in->model p50", "in_p50_ms", ".2f"), ("p99", "in_p99_ms", ".2f"), ("model->wire p50", "out_p50_ms", ".1f"),
    ("model %", "model_pct", ".0f"), ("ast %", "ast_pct", ".0f"),
]


def format_header() -> str:
    return "| " + " | ".join(head for head, _, _ in COLUMNS) + " |\n|" + "---|" * len(COLUMNS)


def format_row(result: dict[str, Any]) -> str:
    return "| " + " | ".join(f"{result[key]:{spec}}" for _, key, spec in COLUMNS) + " |"


def machine_line(args: argparse.Namespace) -> str:
    placement = ("our process on CPU 0, the fakes on CPU 1" if args.workers == 1 else
                 f"{args.workers} AudioSocket processes on one port (AUDIOSOCKET_REUSE_PORT), pinned to CPUs 0 and 1 "
                 f"in turn, the fakes unpinned")
    loop_kind = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return (f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}, load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, Python {sys.version.split()[0]}, {loop_kind} loop; "
            f"AUDIOSOCKET_FRAMES_PER_APPEND={args.frames_per_append}, model talks {args.talk:.0%} of the time in "
            f"100 ms deltas{', over TLS (wss)' if args.tls else ''}; "
            f"{placement}; "
            f"{args.seconds:g} s measured after {WARMUP_SECONDS:g} s")


async def main(args: argparse.Namespace) -> None:
    if args.role == "model":
        await role_model(args.talk, args.cpu, args.tls_dir)
        return
    if args.role == "asterisk":
        await role_asterisk(args.port, args.cpu)
        return
    if args.role == "worker":
        await role_worker(args.env, args.cpu)
        return
    print(f"AudioSocket bridge: {machine_line(args)}")
    print(format_header(), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for calls in (int(n) for n in args.calls.split(",")):
            results.append(await run(calls, args, Path(tmp)))
            print(format_row(results[-1]), flush=True)
    print(f"anchors: {ANCHORS}; ours at {results[-1]['calls']} calls: "
          f"{results[-1]['us_call'] / 200:.2f} % of a core per call")
    print("goal (issue 17): 200 calls on one core with rx p99 < 5 ms, gap max <= 40 ms, <= 50 us/call, "
          "in->model p50 < 1 ms; model->wire includes the wait for the next 20 ms slot (median 10 ms when idle)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="50,200")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--frames-per-append", type=int, default=1, choices=[1, 2],
                        help="AUDIOSOCKET_FRAMES_PER_APPEND for our process")
    parser.add_argument("--talk", type=float, default=0.5, help="share of 100 ms blocks the model echoes")
    parser.add_argument("--tls", action="store_true", help="the model over wss:// (a self-signed certificate)")
    parser.add_argument("--workers", type=int, default=1, help="AudioSocket processes sharing the port")
    parser.add_argument("--uvloop", action="store_true", help="run our process on uvloop (pip install uvloop)")
    parser.add_argument("--profile", help="cProfile our process while measuring; writes FILE.<calls>")
    parser.add_argument("--role", choices=["bench", "model", "asterisk", "worker"], default="bench",
                        help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tls-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--env", default="{}", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.uvloop:
        import uvloop
        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
