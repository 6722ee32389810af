"""End-to-end benchmark: N calls through the whole path, as `tests/test_e2e_campaign.py` runs one.

`opendeep serve` is a subprocess (web, FastAGI, AudioSocket, AMI, scheduler, after-call services) against the
Asterisk simulator (tests/doubles/asterisk_sim.py: AMI events, the shipped dialplan, three AGI sessions and
one AudioSocket session with 20 ms speech frames per call) and the scripted fake OpenAI server (chat + realtime).
One chat turn plans N targets, the confirm starts the campaign; each call AI greets (1 s of audio, streamed at
speaking pace), asks the user a question, which this script answers through POST /api/feedback/{id}/answer as
a user would, thanks the callee (1 s) and ends the call; the analyzer completes each task and the summarizer
writes the campaign summary.

Printed per N:
  conc         MAX_CONCURRENT_CALLS (= per user): calls in progress at once
  wall s       confirm -> the campaign summary written (every task completed)
  calls/min    N / wall, end to end
  serve CPU s  user + system CPU of the `opendeep serve` process over that time
  CPU/call ms  serve CPU s / N
  CPU %        serve CPU over wall time (100 = one core)
  harness CPU  this process (simulator + fake models + the answering user), for comparison

    .venv/bin/python bench/bench_e2e.py [--calls 20,50] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import psutil  # noqa: E402

from opendeep.settings import load_settings  # noqa: E402
from tests.doubles.asterisk_sim import AsteriskSim, Callee  # noqa: E402
from tests.doubles.fake_openai import FakeOpenAI, ScriptedModels  # noqa: E402
from tests.doubles.serve_process import ServeProcess  # noqa: E402

USER, PASSWORD = "bench", "bench password 1"
TIMEOUT_PER_CALL = 5.0   # generous: a run that does not finish in N * this (+30 s) is reported as a failure


def targets(count: int) -> tuple[tuple[str, str], ...]:
    # +1 415 555 0100..0199: the range reserved for fiction, valid E.164 numbers.
    if count > 100:
        raise SystemExit("at most 100 calls per run (the fictional +1 415 555 01xx range)")
    return tuple((f"Practice {i:02d}", f"+1415555{100 + i:04d}") for i in range(count))


async def _answer_questions(http: httpx.AsyncClient, headers: dict[str, str], done: asyncio.Event) -> int:
    answered: set[int] = set()
    while not done.is_set():
        for question in (await http.get("/api/feedback")).json()["pending"]:
            if question["request_id"] not in answered:
                answered.add(question["request_id"])
                await http.post(f"/api/feedback/{question['request_id']}/answer", headers=headers,
                                json={"answer": "Tuesday at 10:00."})
        await asyncio.sleep(0.2)
    return len(answered)


def _finished(db_path: Path, campaign_id: int) -> tuple[int, bool]:
    with sqlite3.connect(db_path, timeout=5) as db:
        completed = db.execute("SELECT count(*) FROM tasks WHERE campaign_id = ? AND status = 'completed'",
                               (campaign_id,)).fetchone()[0]
        summarized = db.execute("SELECT summarized_at IS NOT NULL FROM campaigns WHERE id = ?",
                                (campaign_id,)).fetchone()[0]
    return completed, bool(summarized)


async def run_once(calls: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        workdir = Path(tmp)
        db_path = workdir / "bench.db"
        models = ScriptedModels(targets(calls), ask_user=True, speech_seconds=1.0)
        fake = models.install(FakeOpenAI())
        serve = ServeProcess(workdir, database_url=f"sqlite+aiosqlite:///{db_path}", extra_env={
            "MAX_CONCURRENT_CALLS": str(concurrency), "MAX_CONCURRENT_CALLS_PER_USER": str(concurrency),
            "LOG_LEVEL": "WARNING", "HITL_TIMEOUT_SECONDS": "60"})
        sim = AsteriskSim(load_settings(serve.settings_env(), dotenv=None), directory=serve.workdir,
                          default_callee=Callee("answer", talk_seconds=60, speech_seconds=1.0))
        try:
            serve.env["OPENAI_BASE_URL"] = await fake.start()
            serve.env["AMI_PORT"] = str(await sim.start())
            await serve.cli("db", "upgrade")
            await serve.cli("user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
            await serve.start()
            async with httpx.AsyncClient(base_url=serve.web_url, timeout=30) as http:
                csrf = (await http.get("/api/session")).json()["csrf_token"]
                login = await http.post("/api/login", json={"username": USER, "password": PASSWORD},
                                        headers={"x-csrf-token": csrf})
                headers = {"x-csrf-token": login.json()["csrf_token"]}
                chat_id = (await http.post("/api/chats", json={}, headers=headers)).json()["id"]
                turn = (await http.post(f"/api/chats/{chat_id}/messages", headers=headers,
                                        json={"text": f"Call these {calls} dentists."})).json()
                process = psutil.Process(serve.process.pid)
                harness = psutil.Process()
                cpu0, own0, started = process.cpu_times(), harness.cpu_times(), time.monotonic()
                confirmed = (await http.post(f"/api/chats/{chat_id}/confirm", headers=headers,
                                             json={"source_key": turn["chat"]["source_key"]})).json()
                campaign_id = confirmed["campaign_id"]
                done = asyncio.Event()
                answering = asyncio.create_task(_answer_questions(http, headers, done))
                deadline = started + calls * TIMEOUT_PER_CALL + 30
                while True:
                    completed, summarized = await asyncio.to_thread(_finished, db_path, campaign_id)
                    if summarized:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"only {completed}/{calls} tasks completed in time; see {serve.log_path}")
                    await asyncio.sleep(0.1)
                wall = time.monotonic() - started
                cpu1, own1 = process.cpu_times(), harness.cpu_times()
                done.set()
                questions = await answering
            errors = [call.error for call in sim.calls if call.error is not None]
            if completed != calls or errors or questions != calls:
                raise RuntimeError(f"{completed}/{calls} completed, {questions} questions, errors: {errors[:3]}")
            serve_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
            own_cpu = (own1.user - own0.user) + (own1.system - own0.system)
            return {"calls": calls, "conc": concurrency, "wall": wall, "per_min": calls / wall * 60,
                    "cpu": serve_cpu, "cpu_call_ms": serve_cpu / calls * 1000, "cpu_pct": serve_cpu / wall * 100,
                    "harness_pct": own_cpu / wall * 100}
        finally:
            try:
                await serve.stop()
            finally:
                serve.kill()
                await sim.stop()
                await fake.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="20,50", help="comma-separated call counts (default 20,50)")
    parser.add_argument("--concurrency", type=int, default=10, help="MAX_CONCURRENT_CALLS (default 10)")
    args = parser.parse_args()
    header = (f"{'calls':>6} {'conc':>5} {'wall s':>7} {'calls/min':>10} {'serve CPU s':>12} "
              f"{'CPU/call ms':>12} {'CPU %':>6} {'harness CPU %':>14}")
    print(header)
    for count in (int(part) for part in args.calls.split(",")):
        row = await run_once(count, args.concurrency)
        print(f"{row['calls']:>6} {row['conc']:>5} {row['wall']:>7.1f} {row['per_min']:>10.1f} {row['cpu']:>12.2f} "
              f"{row['cpu_call_ms']:>12.1f} {row['cpu_pct']:>6.1f} {row['harness_pct']:>14.1f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
