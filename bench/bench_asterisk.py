"""Latency on a real Asterisk 22: N calls, one after the other, through the whole product.

`opendeep serve` (subprocess) places each call through the private Asterisk of tests/asterisk/ (the dialplan that
`opendeep dialplan render` wrote); the callee (a Local channel, tests/asterisk/extensions_test.conf extension 1)
answers at once, records what it hears (MixMonitor r()) and says the stock prompt "hello-world"; the call AI is the
fake Realtime server, which greets with 1 s of speech as soon as it is asked to, then ends the call.

Printed per call, and the median over N:
  originate->heard ms   Asterisk's Newchannel of the Originate's ;1 half -> the first loud 20 ms frame of the
                        model's greeting in what the callee heard (its recording starts at its UserEvent)
  word->model ms        the callee's first loud frame of the prompt, as played (Playback starts right after the
                        UserEvent) -> the input_audio_buffer.append that carried it reaching the fake model
Times are Asterisk's AMI `Timestamp` headers (timestampevents=yes) and this process's clock: one machine, one
clock. The load is this machine's: note what else runs.

    .venv/bin/python bench/bench_asterisk.py [--calls 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.asterisk import audio_match  # noqa: E402
from tests.asterisk.instance import AsteriskInstance, find_asterisk  # noqa: E402
from tests.asterisk.stack import RealStack  # noqa: E402
from tests.doubles.fake_realtime import FakeResponse  # noqa: E402

LOUD = 300.0   # RMS of a 20 ms frame that counts as speech


def first_loud_ms(slin: bytes) -> int:
    levels = audio_match.envelope(slin)
    return next(i for i, level in enumerate(levels) if level > LOUD) * 20


async def one_call(stack: RealStack, workdir: Path, index: int, prompt_lead_ms: int) -> tuple[float, float]:
    number = f"+141555501{10 + index}"
    before = len(stack.fake.realtime.connections)
    _, [task_id] = await stack.import_campaign([(f"Callee {index}", number)], name=f"bench {index}")
    await stack.wait_task(task_id, "completed", timeout=60)
    (call, _, _), = await stack.call_rows(task_id)
    originate = next(m for m in stack.observer.events("Newchannel") if m.get("Uniqueid") == f"opendeep-{call.id}")
    answered = next(m for m in stack.observer.events("UserEvent")
                    if m.get("UserEvent") == "OpenDeepTestCallee" and m.get("Linkedid") == f"opendeep-{call.id}")
    heard = audio_match.read_wav(stack.asterisk.recordings / f"heard-{answered['Uniqueid']}.wav")
    heard_at = float(answered["Timestamp"]) + first_loud_ms(heard) / 1000
    conn = stack.fake.realtime.connections[before]
    received = audio_match.mulaw_to_slin(bytes(conn.audio_in))
    word_offset = first_loud_ms(received) // 20 * 160          # mu-law bytes into the stream
    arrived_at = next(at for at, offset in reversed(conn.append_times) if offset <= word_offset)
    said_at = float(answered["Timestamp"]) + prompt_lead_ms / 1000
    return (heard_at - float(originate["Timestamp"])) * 1000, (arrived_at - said_at) * 1000


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
            audio=stack.models.speech, transcript="Hello.", chunk_interval=0.1,
            function_call=("end_call", {"outcome": "objective_met", "summary": "Greeted."})) if i == 0 else None
        try:
            await stack.start()
            prompt = workdir / "hello-world.sln"
            asterisk.rx(f"file convert {asterisk.workdir / 'data/sounds/en/hello-world.gsm'} {prompt}")
            prompt_lead_ms = first_loud_ms(prompt.read_bytes())
            results = []
            print(f"Asterisk {binary}; {calls} calls one after another; {os.cpu_count()} cores")
            print(f"{'call':>4} {'originate->heard ms':>20} {'word->model ms':>15}")
            for index in range(calls):
                heard, word = await one_call(stack, workdir, index, prompt_lead_ms)
                results.append((heard, word))
                print(f"{index + 1:>4} {heard:>20.0f} {word:>15.0f}")
            print(f"median {statistics.median(r[0] for r in results):>18.0f} "
                  f"{statistics.median(r[1] for r in results):>15.0f}")
        finally:
            await stack.stop()
            await asyncio.to_thread(asterisk.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10)
    asyncio.run(main(parser.parse_args().calls))
