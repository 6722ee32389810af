"""The live board: the user's calls in progress only (who, how long, the last words), hang up through the task's
cancel control (CSRF, owner only) with the AMI Hangup on the wire, and listen-in for the owner alone."""

from __future__ import annotations

from datetime import timedelta

import pytest_asyncio

from ami_controller.manager import AmiController
from db import repo
from db.models import Call, CallStatus, Speaker, TaskStatus
from db.types import utcnow
from tests.doubles.fake_ami import FakeAmi
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from webui.app import create_app
from webui.board import board_calls, format_duration

CHANNEL = "Local/14155550101@opendeep-outbound-00000001;1"


async def live_call(runtime, user_id: int, name: str, *, status=CallStatus.ANSWERED, answered_ago: int = 75,
                    lines: tuple[str, ...] = ()) -> tuple[int, int]:
    """A campaign with one task whose call is in progress (as call-start and call-answered leave it)."""
    now = utcnow()
    async with runtime.sessions() as session:
        campaign = await repo.create_campaign(session, user_id, name=f"{name}'s campaign")
        task = await repo.add_task(session, user_id, campaign.id, target_name=name, phone_number="+14155550101")
        task.status = TaskStatus.IN_PROGRESS
        task.attempt_count = 1
        call = Call(user_id=user_id, task_id=task.id, attempt_number=1, status=status, channel=CHANNEL,
                    dialed_number="+14155550101", created_at=now - timedelta(seconds=answered_ago + 9),
                    started_at=now - timedelta(seconds=answered_ago + 9),
                    answered_at=now - timedelta(seconds=answered_ago) if status is CallStatus.ANSWERED else None)
        session.add(call)
        await session.flush()
        for n, text in enumerate(lines):
            await repo.add_transcript(session, user_id, call.id, Speaker.AGENT if n % 2 == 0 else Speaker.CALLEE,
                                      text, n * 1000)
        await session.commit()
        return task.id, call.id


@pytest_asyncio.fixture
async def board(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    alice = await add_user(runtime, "alice")
    bob = await add_user(runtime, "bob")
    client = WebClient(create_app(runtime))
    await client.login("alice")
    yield runtime, client, alice, bob
    await client.aclose()


async def test_the_board_shows_the_users_calls_in_progress_who_how_long_and_the_last_words(board):
    runtime, client, alice, bob = board
    _, talking = await live_call(runtime, alice, "Sunny <Bakery>", lines=("Hello, this is Alice's assistant.",
                                                                           "Hi, how can I help?",
                                                                           "Are you open on Sunday?",
                                                                           "Yes, from eight to noon."))
    _, ringing = await live_call(runtime, alice, "Oak Dental", status=CallStatus.RINGING)
    ended_task, ended = await live_call(runtime, alice, "Done Deli", lines=("Bye.",))
    async with runtime.sessions() as session:
        (await repo.get_call(session, alice, ended)).status = CallStatus.ENDED
        await session.commit()
    await live_call(runtime, bob, "Bob's Garage", lines=("Bob's secret line",))

    page = await client.http.get("/board")
    assert page.status_code == 200
    text = page.text
    assert f'id="board-call-{talking}"' in text and f'id="board-call-{ringing}"' in text
    assert f'id="board-call-{ended}"' not in text and "Bob&#39;s" not in text and "secret" not in text
    assert "Sunny &lt;Bakery&gt;" in text and "+14155550101" in text
    # The last three lines, oldest first; the first line has scrolled off.
    talking_row = text.split(f'id="board-call-{talking}"')[1].split("</tr>")[0]
    assert "Hello, this is" not in talking_row
    assert talking_row.index("Hi, how can I help?") < talking_row.index("Yes, from eight to noon.")
    assert "talking" in talking_row and 'data-since="' in talking_row
    assert "Nothing said yet." in text.split(f'id="board-call-{ringing}"')[1].split("</tr>")[0]
    rows = await client.http.get("/board/rows")
    assert "<html" not in rows.text and f'id="board-call-{talking}"' in rows.text

    calls = await board_calls(runtime.sessions, alice, utcnow())
    assert [c["id"] for c in calls] == [talking, ringing]      # oldest first
    later = await board_calls(runtime.sessions, alice, utcnow() + timedelta(hours=1))
    assert later[0]["seconds"] >= 3600 + 75 and later[0]["duration"].startswith("1:01:")
    assert (format_duration(75), format_duration(3725), format_duration(None)) == ("1:15", "1:02:05", "—")


async def test_listen_in_is_the_owners_alone(board):
    runtime, client, alice, bob = board
    _, mine = await live_call(runtime, alice, "Sunny Bakery", lines=("Good morning!",))
    _, bobs = await live_call(runtime, bob, "Bob's Garage", lines=("Bob's secret line",))
    page = await client.http.get(f"/board/calls/{mine}")
    assert page.status_code == 200 and "Good morning!" in page.text
    assert f'id="listen-transcript" data-call-id="{mine}"' in page.text and "/static/board.js" in page.text
    refused = await client.http.get(f"/board/calls/{bobs}")
    assert refused.status_code == 404 and "secret" not in refused.text
    assert (await client.form(f"/board/calls/{bobs}/hangup")).status_code == 404
    async with runtime.sessions() as session:
        assert (await repo.get_call(session, bob, bobs)).status is CallStatus.ANSWERED


async def test_hang_up_needs_the_csrf_token_cancels_the_task_and_sends_the_ami_hangup(settings_env, engine,
                                                                                       sessions):
    fake = FakeAmi(username="opendeep", secret="secret")
    port = await fake.start()
    runtime = make_runtime(settings_env, engine, sessions, AMI_PORT=str(port), AMI_SECRET="secret")
    ami = AmiController(runtime.settings, runtime.sessions, runtime.events)
    await ami.start()
    client = WebClient(create_app(runtime))
    try:
        await ami.wait_connected(5)
        runtime.ami = ami
        alice = await add_user(runtime, "alice")
        await client.login("alice")
        task_id, call_id = await live_call(runtime, alice, "Sunny Bakery")
        forged = await client.http.post(f"/board/calls/{call_id}/hangup", data={"csrf_token": "forged"})
        assert forged.status_code == 403
        async with runtime.sessions() as session:
            assert (await repo.get_task(session, alice, task_id)).status is TaskStatus.IN_PROGRESS
        response = await client.form(f"/board/calls/{call_id}/hangup")
        hangup = dict(await fake.wait_for_action("Hangup", timeout=5))
        assert response.status_code == 303 and response.headers["location"] == "/board"
        board_page = (await client.http.get("/board")).text
    finally:
        await client.aclose()
        await ami.stop()
        await fake.stop()
    assert hangup["Channel"] == CHANNEL and hangup["Cause"] == "16"
    # This fake Asterisk has no such live channel (the row was written by the test): the user is told.
    assert f"Call {call_id}: task {task_id} cancelled; hung up 0 call(s) (1 hangup(s) failed" in \
        board_page.replace("&#39;", "'")
    async with runtime.sessions() as session:
        task = await repo.get_task(session, alice, task_id)
        assert task.status is TaskStatus.CANCELLED and task.status_reason == "cancelled by user"


async def test_hanging_up_a_call_that_already_ended_says_so(board):
    runtime, client, alice, _ = board
    task_id, call_id = await live_call(runtime, alice, "Sunny Bakery")
    async with runtime.sessions() as session:
        (await repo.get_call(session, alice, call_id)).status = CallStatus.ENDED
        (await repo.get_task(session, alice, task_id)).status = TaskStatus.COMPLETED
        await session.commit()
    response = await client.form(f"/board/calls/{call_id}/hangup")
    assert response.status_code == 303
    assert f"Call {call_id} had already ended." in (await client.http.get("/board")).text
    async with runtime.sessions() as session:
        assert (await repo.get_task(session, alice, task_id)).status is TaskStatus.COMPLETED


async def test_the_json_api_lists_the_users_calls_in_progress(board):
    runtime, client, alice, bob = board
    task_id, call_id = await live_call(runtime, alice, "Sunny Bakery", lines=("Good morning!",))
    await live_call(runtime, bob, "Bob's Garage")
    calls = (await client.http.get("/api/board")).json()["calls"]
    assert [(c["id"], c["task_id"], c["target_name"], c["status"]) for c in calls] == [
        (call_id, task_id, "Sunny Bakery", "answered")]
    assert calls[0]["last_words"] == [{"speaker": "agent", "text": "Good morning!", "offset_ms": 0}]
