"""Scale-out on real Asterisk 22s: OpenDeep split over processes and over two Asterisk servers.

- A call's live actions work from the process that holds its AudioSocket even when the AMI controller runs in
  another one: the AI's keys reach the IVR's Read() (ami_controller/actions.py, the worker's own AMI connection).
- Two private Asterisks in ASTERISK_SERVERS, each with its own AMI login, call limit and AudioSocket worker: one
  scheduler feeds both, every call records its server and is carried by that Asterisk and that worker, and a call
  survives the loss (kill -9) of the worker that does not hold it.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from db.models import CallOutcome, CallStatus
from tests.asterisk.instance import AsteriskInstance, find_asterisk
from tests.asterisk.observer import AmiObserver
from tests.asterisk.stack import IVR, RealStack
from tests.doubles.serve_process import ServeProcess

pytestmark = pytest.mark.asterisk

CONTROL_PARTS = "fastagi,ami,aftercall,web"   # everything but the AudioSocket bridge
LONG_CALLEES = ("+14155550401", "+14155550402")   # tests/asterisk/extensions_test.conf: about 6 s each


@pytest.fixture(scope="module")
def second_asterisk(tmp_path_factory):
    """Another private Asterisk, with its own AMI port (the `asterisk` fixture's is the first one)."""
    binary, reason = find_asterisk()
    if binary is None:
        pytest.skip(f"no real Asterisk: {reason}")
    instance = AsteriskInstance(binary, tmp_path_factory.mktemp("asterisk-b"))
    instance.start()
    yield instance
    instance.stop()


def _worker(stack: RealStack, name: str) -> ServeProcess:
    """An `opendeep serve --only audiosocket` worker on the stack's database and settings, its own port."""
    directory = stack.workdir / name
    directory.mkdir(exist_ok=True)
    shared = {key: value for key, value in stack.serve.env.items()
              if key not in ("WEB_BIND", "FASTAGI_BIND", "AUDIOSOCKET_BIND")}
    worker = ServeProcess(directory, database_url=stack.database_url, extra_env=shared)
    worker.only = "audiosocket"
    return worker


def _say(stack, *steps):
    from tests.doubles.fake_realtime import FakeResponse

    def script(conn, index):
        if index >= len(steps):
            return None
        transcript, function_call = steps[index]
        return FakeResponse(audio=stack.models.speech, transcript=transcript, chunk_interval=0.1,
                            function_call=function_call)
    stack.fake.realtime.script = script


async def _start_workers(stack: RealStack, *workers: ServeProcess) -> None:
    for worker in workers:
        worker.env["OPENAI_BASE_URL"] = stack.serve.env["OPENAI_BASE_URL"]   # known once the fake model runs
        await worker.start()


async def _stop_workers(*workers: ServeProcess) -> None:
    for worker in workers:
        try:
            await worker.stop()
        finally:
            worker.kill()


async def test_keys_the_ai_presses_in_a_worker_without_the_ami_controller_reach_the_ivr(asterisk, tmp_path):
    stack = RealStack(asterisk, tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}")
    worker = _worker(stack, "worker")
    stack.serve.env["AUDIOSOCKET_ADVERTISE"] = f"127.0.0.1:{worker.audiosocket_port}"
    stack.serve.only = CONTROL_PARTS
    try:
        await stack.start()
        await _start_workers(stack, worker)
        _say(stack, ("Pressing four two.", ("send_dtmf", {"digits": "42#"})))
        _, [task_id] = await stack.import_campaign([("IVR", IVR)])
        digits = await stack.observer.wait_event("UserEvent", 40, UserEvent="OpenDeepTestDigits")
        assert (digits["Digits"], digits["Status"]) == ("42", "OK")
        (call, events, _), = await stack.call_rows(task_id)
        pressed = [event.payload for event in events if event.type == "ai.tool"
                   and event.payload.get("name") == "send_dtmf"]
        assert pressed and all(payload["result"]["ok"] for payload in pressed), pressed
        assert "audiosocket.connected" in [event.type for event in events]
        # The bridge ran in the worker (the main process has no AudioSocket part), and the worker sent the keys
        # over an AMI connection of its own.
        assert "live-call actions only" in worker.log_text(), worker.log_text()
        assert "not available in this process" not in worker.log_text()
    finally:
        await _stop_workers(worker)
        code = await stack.stop()
    assert code == 0, stack.serve.log_text()
    assert "Traceback" not in stack.serve.log_text() + worker.log_text()


async def test_two_asterisk_servers_each_carry_their_calls_and_a_call_survives_the_other_worker_dying(
        asterisk, second_asterisk, tmp_path):
    stack = RealStack(asterisk, tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}")
    workers = {"pbx-a": _worker(stack, "worker-a"), "pbx-b": _worker(stack, "worker-b")}
    servers = [{"name": name, "ami": f"127.0.0.1:{instance.ami_port}", "max_calls": 1,
                "audiosocket": f"127.0.0.1:{workers[name].audiosocket_port}"}
               for name, instance in (("pbx-a", asterisk), ("pbx-b", second_asterisk))]
    stack.serve.env["ASTERISK_SERVERS"] = json.dumps(servers)
    stack.serve.only = CONTROL_PARTS
    observer_b = AmiObserver(second_asterisk.ami_port)
    try:
        # The second Asterisk gets the dialplan and AMI user rendered for it, as its admin would install them.
        out = tmp_path / "rendered-b"
        await stack.serve.cli("dialplan", "render", "--out", str(out), "--server", "pbx-b")
        await asyncio.to_thread(second_asterisk.install_opendeep,
                                {path.name: path.read_text(encoding="utf-8") for path in out.iterdir()})
        await observer_b.start()
        await stack.start()
        await _start_workers(stack, *workers.values())
        health = (await stack.http.get("/healthz")).json()["components"]["ami"]
        assert {name: server["connected"] for name, server in health["servers"].items()} == {
            "pbx-a": True, "pbx-b": True}

        _say(stack, ("Hello, this is an AI assistant.", None))
        _, task_ids = await stack.import_campaign([(f"Callee {n}", number) for n, number in enumerate(LONG_CALLEES)])
        # One call on each server at once (each has max_calls 1); both reach their AudioSocket worker.
        calls = {}
        for _ in range(200):
            rows = [row for task_id in task_ids for row in await stack.call_rows(task_id)]
            calls = {call.asterisk_server: (call, events) for call, events, _ in rows}
            if len(calls) == 2 and all("audiosocket.connected" in [e.type for e in events]
                                       for _, events in calls.values()):
                break
            await asyncio.sleep(0.1)
        assert set(calls) == {"pbx-a", "pbx-b"}, calls
        # Each call went through its own Asterisk: its pre-assigned Uniqueid shows up there, not on the other.
        for name, observer, other in (("pbx-a", stack.observer, observer_b), ("pbx-b", observer_b, stack.observer)):
            uniqueid = f"opendeep-{calls[name][0].id}"
            assert any(m.get("Uniqueid") == uniqueid for m in observer.events("Newchannel")), name
            assert not any(m.get("Uniqueid") == uniqueid for m in other.events("Newchannel")), name

        # pbx-b's worker dies in the middle of its call; pbx-a's call, in the other worker, goes on to its end.
        workers["pbx-b"].kill()
        survivor = calls["pbx-a"][0]
        task = await stack.wait_task(survivor.task_id, "completed", timeout=40)
        (call, events, _), = await stack.call_rows(survivor.task_id)
        assert (call.status, call.outcome, call.dial_status) == (CallStatus.ENDED, CallOutcome.ANSWERED, "ANSWER")
        ended = next(e for e in events if e.type == "audiosocket.ended")
        assert ended.payload["reason"] == "caller_hung_up", ended.payload
        assert task["calls"][0]["outcome"] == "answered"
        # The other call ends too: Asterisk saw its AudioSocket cut, and its `h` extension reported the end.
        lost = calls["pbx-b"][0]
        (lost, _, _), = await stack.call_rows(lost.task_id)
        assert lost.status is CallStatus.ENDED and lost.ended_at is not None
    finally:
        await _stop_workers(*workers.values())
        await observer_b.stop()
        code = await stack.stop()
    assert code == 0, stack.serve.log_text()
    assert "Traceback" not in stack.serve.log_text()
