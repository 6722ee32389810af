"""Callback latency on a real Asterisk 22: a callee rings back, how long until they hear the AI's first word?

`opendeep serve` (subprocess) and the private Asterisk of tests/asterisk/ with the dialplan `opendeep dialplan
render` wrote. One task calls a busy number once (so a callback has a task to find); then, N times one after the
other, the AMI originates a Local channel into [opendeep-inbound] with that number as CallerID, as a trunk would
deliver the callee's call. Its other end ([opendeep-test-caller] in tests/asterisk/extensions_test.conf) records
what the caller hears (MixMonitor r()) from the moment OpenDeep answers. The call AI is the fake Realtime server,
which greets with 1 s of speech as soon as it is asked to, then ends the call.

Printed per call, and the median over N:
  ring->first word ms   Asterisk's Newchannel of the inbound channel (the call arriving: its first ring) -> the
                        first loud 20 ms frame of the AI's greeting in what the caller heard (its recording
                        starts at its UserEvent, on answer)
  of which: callback AGI ms  the same Newchannel -> the callback route's decision written (the `agi.callback`
                        call event's time)
Times are Asterisk's AMI `Timestamp` headers (timestampevents=yes) and OpenDeep's clock: one machine, one clock.
The load is this machine's (printed): note what else runs.

    .venv/bin/python bench/bench_callbacks.py [--calls 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import wave
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db.models import CallDirection  # noqa: E402
from tests.asterisk import audio_match  # noqa: E402
from tests.asterisk.instance import AsteriskInstance, find_asterisk  # noqa: E402
from tests.asterisk.stack import BUSY, RealStack  # noqa: E402
from tests.doubles.ami_helpers import eventually  # noqa: E402
from tests.doubles.fake_realtime import FakeResponse  # noqa: E402

LOUD = 300.0   # RMS of a 20 ms frame that counts as speech


def first_loud_ms(slin: bytes) -> int:
    levels = audio_match.envelope(slin)
    return next(i for i, level in enumerate(levels) if level > LOUD) * 20


async def one_callback(stack: RealStack, task_id: int, index: int) -> tuple[float, float]:
    tag = f"bench-{index}"
    response = await stack.observer.action(
        "Originate", Channel="Local/s@opendeep-inbound/n", Context="opendeep-test-caller", Exten="s",
        Priority="1", CallerID=f'"Callee" <{BUSY}>', ChannelId=tag, OtherChannelId=f"{tag}-b",
        Timeout="30000", Async="true")
    assert response["Response"] == "Success", response
    answered = await stack.observer.wait_event("UserEvent", 30, UserEvent="OpenDeepTestCaller", Uniqueid=tag)
    await stack.observer.wait_event("Hangup", 30, Uniqueid=tag)
    ring = next(m for m in stack.observer.events("Newchannel") if m.get("Uniqueid") == f"{tag}-b")

    async def recording():   # MixMonitor closes its file on its own thread, just after the hangup
        try:
            return audio_match.read_wav(stack.asterisk.recordings / f"heard-callback-{tag}.wav")
        except (OSError, EOFError, wave.Error):
            return None
    heard = await eventually(recording, 10, 0.1, what="the caller's recording")
    heard_at = float(answered["Timestamp"]) + first_loud_ms(heard) / 1000

    async def decided():
        rows = [row for row in await stack.call_rows(task_id) if row[0].direction is CallDirection.INBOUND]
        return rows[index] if len(rows) > index else None
    _, events, _ = await eventually(decided, 20, 0.2, what="the callback's call row")
    agi_at = next(e.at for e in events if e.type == "agi.callback").timestamp()
    return (heard_at - float(ring["Timestamp"])) * 1000, (agi_at - float(ring["Timestamp"])) * 1000


async def main(calls: int) -> None:
    binary, reason = find_asterisk()
    if binary is None:
        raise SystemExit(f"no Asterisk: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        asterisk = AsteriskInstance(binary, workdir / "asterisk")
        await asyncio.to_thread(asterisk.start)
        stack = RealStack(asterisk, workdir, f"sqlite+aiosqlite:///{workdir / 'bench.db'}")
        stack.fake.realtime.script = lambda conn, i: FakeResponse(
            audio=stack.models.speech, transcript="Hello, thank you for calling back.", chunk_interval=0.1,
            function_call=("end_call", {"outcome": "objective_met", "summary": "Greeted."})) if i == 0 else None
        try:
            await stack.start()
            _, [task_id] = await stack.import_campaign([("Busy", BUSY)], max_attempts=3, name="bench callbacks")
            await stack.wait_task(task_id, "retry_scheduled", timeout=60)
            results = []
            print(f"Asterisk {binary}; {calls} callbacks one after another; {os.cpu_count()} cores; "
                  f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            print(f"{'call':>4} {'ring->first word ms':>20} {'callback AGI ms':>16}")
            for index in range(calls):
                first_word, agi = await one_callback(stack, task_id, index)
                results.append((first_word, agi))
                print(f"{index + 1:>4} {first_word:>20.0f} {agi:>16.0f}")
            print(f"median {statistics.median(r[0] for r in results):>18.0f} "
                  f"{statistics.median(r[1] for r in results):>16.0f}")
            print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        finally:
            await stack.stop()
            await asyncio.to_thread(asterisk.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10)
    asyncio.run(main(parser.parse_args().calls))
