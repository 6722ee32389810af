"""Call recordings: the web UI serves a call's recording to its owner only, and the lifecycle manager deletes
recordings past RECORDING_RETENTION_DAYS (the recording itself, on a real Asterisk:
tests/test_asterisk_calls.py::test_the_call_is_recorded_both_ways_and_only_its_owner_can_fetch_it)."""

from __future__ import annotations

import os
import wave
from datetime import timedelta

from db.models import Call, CallStatus
from db.types import utcnow
from opendeep.lifecycle import LifecycleManager
from opendeep.recordings import recording_path
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from tests.test_webui_plan_csv import a_plan
from webui.app import create_app
from webui.orchestrator import confirm_plan


def _write_wav(path, seconds: float = 0.5) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(8000)
        handle.writeframes(b"\x10\x00" * int(8000 * seconds))
    return path.read_bytes()


async def test_only_the_calls_owner_gets_its_recording(settings_env, engine, sessions, tmp_path):
    runtime = make_runtime(settings_env, engine, sessions, RECORDINGS_DIR=str(tmp_path / "rec"))
    alice, _ = await add_user(runtime, "alice"), await add_user(runtime, "bob")
    confirmation = await confirm_plan(sessions, alice, a_plan(), "k")
    async with sessions() as session:
        call = Call(user_id=alice, task_id=confirmation.task_ids[0], attempt_number=1, status=CallStatus.ENDED,
                    dialed_number="+14155550101")
        session.add(call)
        await session.commit()
    app = create_app(runtime)
    owner, other = WebClient(app), WebClient(app)
    await owner.login("alice")
    await other.login("bob")
    try:
        assert (await owner.http.get(f"/calls/{call.id}/recording.wav")).status_code == 404   # none yet
        assert "recording.wav" not in (await owner.http.get(f"/calls/{call.id}")).text
        content = _write_wav(recording_path(runtime.settings, alice, call.id))
        fetched = await owner.http.get(f"/calls/{call.id}/recording.wav")
        assert fetched.status_code == 200 and fetched.content == content
        assert fetched.headers["content-type"] == "audio/wav"
        assert f'src="/calls/{call.id}/recording.wav"' in (await owner.http.get(f"/calls/{call.id}")).text
        assert (await other.http.get(f"/calls/{call.id}/recording.wav")).status_code == 404
    finally:
        await owner.aclose()
        await other.aclose()


async def test_the_lifecycle_pass_deletes_recordings_past_their_retention(settings_env, sessions, tmp_path):
    runtime = make_runtime(settings_env, None, sessions, RECORDINGS_DIR=str(tmp_path / "rec"),
                           RECORDING_RETENTION_DAYS="30")
    now = utcnow()
    old, fresh = recording_path(runtime.settings, 1, 10), recording_path(runtime.settings, 2, 20)
    for path, age in ((old, timedelta(days=31)), (fresh, timedelta(days=29))):
        _write_wav(path)
        written = (now - age).timestamp()
        os.utime(path, (written, written))
    counts = await LifecycleManager(runtime.settings, sessions).run_once(now)
    assert counts["recordings_deleted"] == 1
    assert not old.exists() and fresh.exists()
