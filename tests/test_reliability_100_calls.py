"""100 calls at once through the whole path - `opendeep serve` (subprocess) against the Asterisk simulator
running the shipped dialplan, with AudioSocket speech both ways and the fake realtime model - and not one
transcript row lost or given to the wrong call.

Each call's model says three things (one per turn, the turns chained by record_note tool calls, the last one
ending the call) and hears the callee say three things (input transcriptions, as the Realtime API reports the
callee's speech). Every line carries the call's own tag, so a row written to the wrong call shows up too.

The simulator, not a real Asterisk: a hundred scripted callees answering at once is load on OpenDeep, which a real
Asterisk cannot be set up to give on demand here (tests/test_asterisk_faults.py runs twenty real calls at once).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, defaultdict

import psutil
from sqlalchemy import select

from db.engine import session_factory
from db.models import Call, CallOutcome, CallStatus, CallTranscript, Speaker, Task, TaskStatus
from opendeep.settings import load_settings
from tests.doubles.asterisk_sim import AsteriskSim, Callee
from tests.doubles.fake_ami import pairs_get
from tests.doubles.fake_openai import FakeOpenAI, ScriptedModels, generated_speech
from tests.doubles.fake_realtime import FakeRealtimeConnection, FakeResponse
from tests.doubles.reliability_serve import CrashableServe, seed_campaign, window_open_now

CALLS = 100
TURNS = 3
NUMBERS = [f"+1415555{n:04d}" for n in range(500, 500 + CALLS)]
SPEECH = generated_speech(0.4)


class ChattyModel:
    """The realtime script: per session, TURNS answers; before each, the callee's words are transcribed. The
    second answer of every call is held back until the last call has connected."""

    def __init__(self) -> None:
        self.sessions: dict[int, str] = {}           # id(conn) -> tag
        self.agent_lines: dict[str, list[str]] = defaultdict(list)
        self.callee_lines: dict[str, list[str]] = defaultdict(list)
        self._tasks: set[asyncio.Task] = set()
        self._waiting: list[tuple[FakeRealtimeConnection, FakeResponse]] = []

    def __call__(self, conn: FakeRealtimeConnection, index: int) -> FakeResponse | None:
        tag = self.sessions.setdefault(id(conn), f"call-{len(self.sessions):03d}")
        if index >= TURNS:
            return None
        heard = f"{tag} callee says {index + 1}"
        self.callee_lines[tag].append(heard)
        send = asyncio.get_running_loop().create_task(conn.send({
            "type": "conversation.item.input_audio_transcription.completed", "item_id": conn.next_id("item"),
            "content_index": 0, "transcript": heard}))
        self._tasks.add(send)
        send.add_done_callback(self._tasks.discard)
        said = f"{tag} agent says {index + 1}"
        self.agent_lines[tag].append(said)
        last = index == TURNS - 1
        tool = (("end_call", {"outcome": "objective_met", "summary": f"{tag}: done"}) if last
                else ("record_note", {"text": f"{tag} note {index + 1}"}))
        response = FakeResponse(audio=SPEECH, transcript=said, function_call=tool)
        if index == 1:
            # The second turn waits until every call is connected: all CALLS calls are up at the same time.
            self._waiting.append((conn, response))
            if len(self.sessions) == CALLS:
                for waiting_conn, waiting in self._waiting:
                    waiting_conn.speak(waiting)
                self._waiting.clear()
            return None
        return response


async def test_100_concurrent_calls_lose_no_transcript_row(tmp_path, engine):
    """On SQLite and PostgreSQL (the `engine` fixture: an empty, migrated database)."""
    database_url = engine.url.render_as_string(hide_password=False)
    models = ScriptedModels(ask_user=False)
    fake = models.install(FakeOpenAI())
    model = ChattyModel()
    fake.realtime.script = model
    stack = CrashableServe(tmp_path, database_url=database_url, only="fastagi,audiosocket,ami,aftercall")
    sim: AsteriskSim | None = None
    sessions = session_factory(engine)
    try:
        base_url = await fake.start()
        stack.env.update(OPENAI_BASE_URL=base_url, MAX_CONCURRENT_CALLS=str(CALLS),
                         MAX_CONCURRENT_CALLS_PER_USER=str(CALLS), DEFAULT_CALLING_WINDOW=window_open_now(NUMBERS[0]),
                         SCHEDULER_POLL_SECONDS="0.2", ORIGINATE_TIMEOUT_SECONDS="10", LOG_LEVEL="WARNING")
        sim = AsteriskSim(load_settings(stack.settings_env(), dotenv=None), directory=stack.workdir,
                          default_callee=Callee("answer", ring_seconds=0.05, talk_seconds=40, speech_seconds=0.4))
        stack.env["AMI_PORT"] = str(await sim.start())
        await stack.cli("db", "upgrade")
        _, _, task_ids = await seed_campaign(database_url, NUMBERS, max_attempts=1)
        started = time.monotonic()
        await stack.start()
        server = psutil.Process(stack.process.pid)

        peak = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 75
        while len(sim.calls) < CALLS or sim.live_calls:
            peak = max(peak, sim.live_calls)
            assert loop.time() < deadline, f"{len(sim.calls)} calls placed, {sim.live_calls} live:\n{stack.log_text()}"
            await asyncio.sleep(0.05)
        dialplan_done = time.monotonic() - started
        calls = await sim.wait_for_calls(CALLS, timeout=5)

        async def all_completed() -> bool:
            async with sessions() as session:
                statuses = (await session.scalars(select(Task.status).where(Task.id.in_(task_ids)))).all()
                return all(status is TaskStatus.COMPLETED for status in statuses)
        while not await all_completed():
            assert loop.time() < deadline + 15, stack.log_text()
            await asyncio.sleep(0.2)
        cpu = server.cpu_times()
        exit_code = await stack.stop()
        async with sessions() as session:
            rows = (await session.scalars(select(CallTranscript).order_by(CallTranscript.id))).all()
            call_rows = (await session.scalars(select(Call))).all()
    finally:
        stack.kill()
        if sim is not None:
            await sim.stop()
        await fake.stop()

    # Asterisk's side: every number dialed once, every call ran the dialplan to its `h` extension.
    dialed = Counter(pairs_get(call.originate, "Channel") for call in calls)
    assert dialed == Counter({f"Local/{number}@opendeep-outbound/n": 1 for number in NUMBERS})
    assert [call.error for call in calls] == [None] * CALLS
    assert all(call.agi_scripts() == ["call-start", "call-answered", "call-end"] for call in calls)
    assert all(call.app_hung_up for call in calls), "every call was ended by the AI's end_call"
    assert peak == CALLS, f"only {peak} calls were up at once"

    # The app's side: one ended, answered, bridged call per task.
    assert len(call_rows) == CALLS
    assert {(c.status, c.outcome, c.bridged_to_ai) for c in call_rows} == {(CallStatus.ENDED, CallOutcome.ANSWERED,
                                                                           True)}
    assert len(model.sessions) == CALLS

    # Not one transcript row lost, doubled or given to another call.
    by_call: dict[int, list[CallTranscript]] = defaultdict(list)
    for row in rows:
        by_call[row.call_id].append(row)
    assert len(by_call) == CALLS
    tags_seen = set()
    for call_id, lines in by_call.items():
        tags = {line.text.split(" ")[0] for line in lines}
        assert len(tags) == 1, (call_id, [line.text for line in lines])
        tag = tags.pop()
        tags_seen.add(tag)
        agent = sorted(line.text for line in lines if line.speaker is Speaker.AGENT)
        callee = sorted(line.text for line in lines if line.speaker is Speaker.CALLEE)
        assert agent == sorted(model.agent_lines[tag]), (call_id, agent, _problems(stack.log_text()))
        assert callee == sorted(model.callee_lines[tag]), (call_id, callee, _problems(stack.log_text()))
    assert tags_seen == set(model.sessions.values())
    assert len(rows) == CALLS * TURNS * 2

    log = stack.log_text()
    assert exit_code == 0 and "Traceback" not in log, log
    cpu_seconds = cpu.user + cpu.system
    print(f"\n{CALLS} calls through the whole path in {dialplan_done:.1f} s "
          f"({CALLS / dialplan_done * 60:.0f} calls/min incl. start-up), peak {peak} at once; "
          f"opendeep serve CPU {cpu_seconds:.1f} s = {cpu_seconds / CALLS * 1000:.0f} ms per call "
          f"({os.cpu_count()} CPUs)")


def _problems(log: str) -> str:
    """The app's warnings and errors: why a row could be missing."""
    return "\n".join(line for line in log.splitlines() if " WARNING " in line or " ERROR " in line)[-4000:]
