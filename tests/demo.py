"""`make demo`: OpenDeep end to end on one machine, with no Asterisk and no API key.

    .venv/bin/python -m tests.demo [--port 8000]

It starts the Asterisk simulator (tests/doubles/asterisk_sim.py: AMI, the shipped dialplan with its FastAGI calls,
and the AudioSocket channel, whose callee says generated speech) and the scripted OpenAI server
(tests/doubles/fake_openai.py: the assistant, the call AI over the Realtime WebSocket, the analyzer, the
summarizer), migrates ./demo.db, creates the user `demo` (password `demo-password`) if missing, and runs
`opendeep serve` pointed at both. Log in and ask the assistant "call these two dentists and book me a cleaning":
it asks whether you want one appointment in total or one with each (the campaign's goal). Answer "just one": the
plan says "until one succeeds", the first dentist is called, its call AI asks you which slot to book (answer in
the page), and once that booking is made the second dentist is not called; the summary says why it stopped.
Answer "one with each" and both are called. Ask instead "ask these two dentists for their earliest cleaning and
let me pick": the plan says "best of several", both give their earliest slot without booking, the campaign page
waits for your choice (a form listing both offers), and the one you pick is called back to book it; the summary
says which was chosen and what the other offered. Ctrl-C stops everything. The app's log goes to ./demo-serve.log.

The simulator plays Asterisk the way tests/test_asterisk_calls.py shows a real Asterisk 22 does (see
tests/doubles/README.md); with a real Asterisk, `make run` and the dialplan README are the way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from opendeep.settings import load_settings
from tests.doubles.asterisk_sim import AsteriskSim, Callee, SimCall
from tests.doubles.fake_openai import DEMO_TARGETS, FakeOpenAI, ScriptedModels
from tests.doubles.serve_process import ServeProcess

USERNAME, PASSWORD = "demo", "demo-password"


async def _ensure_user(serve: ServeProcess) -> None:
    try:
        await serve.cli("user", "add", USERNAME, "--password-stdin", input=PASSWORD + "\n")
    except RuntimeError as exc:
        if "exist" not in str(exc).lower():
            raise


async def _narrate(sim: AsteriskSim, stop: asyncio.Event) -> None:
    """One line per call on the terminal, so the simulator's side is visible too."""
    async def follow(call: SimCall) -> None:
        print(f"  Asterisk simulator: Originate to {call.number} (call {call.call_id})", flush=True)
        await call.done.wait()
        status = call.local.variables.get("DIALSTATUS", "not dialed") if call.local else "failed"
        how = "the AI hung up" if call.app_hung_up else "the callee hung up"
        print(f"  Asterisk simulator: call {call.call_id} to {call.number} ended: {status}"
              f"{f' ({how})' if status == 'ANSWER' else ''}", flush=True)
    followers: set[asyncio.Task] = set()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            call = await sim.wait_for_call(timeout=0.5)
            task = asyncio.create_task(follow(call))
            followers.add(task)
            task.add_done_callback(followers.discard)
    for task in followers:
        task.cancel()


async def main(port: int) -> int:
    workdir = Path.cwd()
    # goal=None: the assistant reads the goal from the request and asks when it is ambiguous.
    models = ScriptedModels(DEMO_TARGETS, ask_user=True, speech_seconds=2.0, goal=None)
    fake = models.install(FakeOpenAI())
    serve = ServeProcess(workdir, database_url=f"sqlite+aiosqlite:///{workdir / 'demo.db'}", web_port=port,
                         log_path=workdir / "demo-serve.log",
                         extra_env={"HITL_TIMEOUT_SECONDS": "180", "SCHEDULER_POLL_SECONDS": "1",
                                    "LIFECYCLE_INTERVAL_SECONDS": "30", "SECRET_KEY": "demo-" + "s" * 40})
    sim = AsteriskSim(load_settings(serve.settings_env(), dotenv=None), directory=serve.workdir,
                      default_callee=Callee("answer", ring_seconds=2.0, talk_seconds=300, speech_seconds=3.0))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    narrator: asyncio.Task | None = None
    try:
        serve.env["OPENAI_BASE_URL"] = await fake.start()
        serve.env["AMI_PORT"] = str(await sim.start())
        await serve.cli("db", "upgrade")
        await _ensure_user(serve)
        await serve.start()
        narrator = asyncio.create_task(_narrate(sim, stop))
        print(f"""
OpenDeep demo is running: {serve.web_url}
  log in as:  {USERNAME} / {PASSWORD}
  then chat: "call these two dentists and book me a cleaning next week"; the assistant asks whether
  you want one appointment or one with each: answer "just one", confirm the plan ("until one succeeds"),
  and answer the question the call asks you. Once one dentist has booked you the other is not called,
  and the campaign's summary says why.
  Or chat: "ask these two dentists for their earliest cleaning and let me pick" ("best of several"): both
  give a slot, the campaign page asks you to choose, and the one you pick is called back to book it.
  The app's log: {serve.log_path}
  Ctrl-C to stop.
""", flush=True)
        while not stop.is_set():
            if serve.process is not None and serve.process.poll() is not None:
                print(f"opendeep serve exited with {serve.process.returncode}; see {serve.log_path}")
                return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        print("\nstopping...", flush=True)
        return 0
    finally:
        stop.set()
        if narrator is not None:
            await asyncio.gather(narrator, return_exceptions=True)
        try:
            await serve.stop()
        finally:
            serve.kill()
            await sim.stop()
            await fake.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="OpenDeep with a simulated Asterisk and scripted models")
    parser.add_argument("--port", type=int, default=8000, help="web UI port (default 8000)")
    raise SystemExit(asyncio.run(main(parser.parse_args().port)))
