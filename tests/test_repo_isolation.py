"""Tenant isolation, function by function: user B can neither see nor change a row of user A."""

import inspect

import pytest

from db import repo, task_life
from db.models import Call, CampaignStatus, ChatRole, FeedbackStatus, Speaker, TaskStatus


@pytest.fixture
async def world(sessions):
    """User A with one of everything; user B with nothing."""
    async with sessions() as session:
        alice = await repo.create_user(session, "alice", "hash-a")
        bob = await repo.create_user(session, "bob", "hash-b")
        campaign = await repo.create_campaign(session, alice.id, name="dentists", source_key="k1")
        task = await repo.add_task(session, alice.id, campaign.id, target_name="Dr. A", phone_number="+14155550123")
        call = Call(user_id=alice.id, task_id=task.id, attempt_number=1, dialed_number=task.phone_number)
        session.add(call)
        await session.flush()
        await repo.record_call_event(session, alice.id, call.id, "call.created")
        await repo.add_transcript(session, alice.id, call.id, Speaker.CALLEE, "hello", 100)
        await repo.record_task_event(session, alice.id, task.id, "task.created", "test")
        await repo.add_dnd(session, alice.id, "+14155550999", "asked not to be called")
        feedback = await repo.create_feedback_request(session, alice.id, call.id, "Is 3pm ok?")
        chat = await repo.create_chat_session(session, alice.id)
        await repo.add_chat_message(session, alice.id, chat.id, ChatRole.USER, "call my dentist")
        note = await repo.add_notification(session, alice.id, "checkin", "still calling")
        await session.commit()
        ids = dict(alice=alice.id, bob=bob.id, campaign=campaign.id, task=task.id, call=call.id,
                   feedback=feedback.id, chat=chat.id, note=note.id, task_time=task.next_action_time,
                   task_read_at=task.updated_at)
    return ids


# Each case: (repo function, how user B calls it, what B must get back).
def _reads(w):
    b = w["bob"]
    return {
        "list_campaigns": ((b,), []),
        "get_campaign": ((b, w["campaign"]), None),
        "get_campaign_by_source_key": ((b, "k1"), None),
        "list_tasks": ((b,), []),
        "get_task": ((b, w["task"]), None),
        "list_task_events": ((b, w["task"]), []),
        "get_call": ((b, w["call"]), None),
        "dnd_check": ((b, "+14155550999"), (False, 1)),   # B learns a count for the global DND, not who
        "list_calls": ((b, w["task"]), []),
        "list_call_events": ((b, w["call"]), []),
        "list_transcript": ((b, w["call"]), []),
        "list_dnd": ((b,), []),
        "is_dnd": ((b, "+14155550999"), False),
        "get_feedback_request": ((b, w["feedback"]), None),
        "list_pending_feedback": ((b,), []),
        "list_closed_feedback": ((b,), []),
        "dnd_numbers_in_campaign": ((b, w["campaign"]), set()),
        "get_chat_session": ((b, w["chat"]), None),
        "list_chat_sessions": ((b,), []),
        "list_chat_messages": ((b, w["chat"]), []),
        "list_notifications": ((b,), []),
        "task_states": ((b,), []),
        "count_tasks": ((b, w["campaign"], [TaskStatus.PENDING]), 0),
    }


def _writes(w):
    b = w["bob"]
    return {
        "set_campaign_status": ((b, w["campaign"], CampaignStatus.CANCELLED), False),
        "add_task": ((b, w["campaign"]), LookupError),
        "move": ((b, w["task"], TaskStatus.CANCELLED), False),
        "release_held": ((b, w["task"]), False, {"was": TaskStatus.PENDING, "reason": "injected"}),
        "clear_held": ((b, [w["task"]]), None),
        "record_task_event": ((b, w["task"], "x"), None),
        "record_call_event": ((b, w["call"], "x"), None),
        "add_transcript": ((b, w["call"], Speaker.AGENT, "injected", 5), None),
        "remove_dnd": ((b, "+14155550999"), False),
        "create_feedback_request": ((b, w["call"], "?"), None),
        "answer_feedback_request": ((b, w["feedback"], "yes"), False),
        "close_feedback_request": ((b, w["feedback"], FeedbackStatus.CANCELLED), False),
        "add_chat_message": ((b, w["chat"], ChatRole.USER, "injected"), None),
        "mark_notification_read": ((b, w["note"]), False),
        "add_tasks": ((b, w["campaign"], [{"target_name": "x", "phone_number": "+14155550100"}]), []),
        # A's task exactly as it was read, so only the user_id can refuse it.
        "move_many": ((b, [task_life.TaskMove(w["task"], w.get("task_read_at"), TaskStatus.CANCELLED,
                                              w.get("task_time"))], "injected", "task.injected"), []),
    }


# Functions that take user_id but act on the caller's own data only (nothing of another tenant to reach).
OWN_DATA_ONLY = {"create_campaign", "add_dnd", "add_dnd_entries", "create_chat_session", "add_notification",
                 "get_user"}


# The repository, and the module that owns a task's life (the only writer of a task's status).
MODULES = (repo, task_life)


def _fn(name):
    return next(getattr(module, name) for module in MODULES if hasattr(module, name))


def test_every_tenant_function_is_covered():
    tenant_functions = {name for module in MODULES
                        for name, fn in inspect.getmembers(module, inspect.iscoroutinefunction)
                        if fn.__module__ == module.__name__ and "user_id" in inspect.signature(fn).parameters}
    covered = set(_reads({k: 0 for k in ("bob", "campaign", "task", "call", "feedback", "chat", "note")}))
    covered |= set(_writes({k: 0 for k in ("bob", "campaign", "task", "call", "feedback", "chat", "note")}))
    assert tenant_functions - covered - OWN_DATA_ONLY == set()


async def test_user_b_sees_nothing_of_user_a(sessions, world):
    async with sessions() as session:
        for name, (args, expected) in _reads(world).items():
            result = await getattr(repo, name)(session, *args)
            if isinstance(expected, list):
                result = list(result)
            assert result == expected, name


async def test_user_b_changes_nothing_of_user_a(sessions, world):
    async with sessions() as session:
        for name, (args, expected, *kwargs) in _writes(world).items():
            fn = _fn(name)
            if expected is LookupError:
                with pytest.raises(LookupError):
                    await fn(session, *args, target_name="x", phone_number="+14155550100")
            else:
                assert await fn(session, *args, **(kwargs[0] if kwargs else {})) == expected, name
        await session.commit()

    a = world["alice"]
    async with sessions() as session:
        assert (await repo.get_campaign(session, a, world["campaign"])).status == CampaignStatus.ACTIVE
        assert [t.status for t in await repo.list_tasks(session, a)] == [TaskStatus.PENDING]
        assert [e.type for e in await repo.list_task_events(session, a, world["task"])] == ["task.created"]
        assert [e.type for e in await repo.list_call_events(session, a, world["call"])] == ["call.created"]
        assert [t.text for t in await repo.list_transcript(session, a, world["call"])] == ["hello"]
        assert await repo.is_dnd(session, a, "+14155550999")
        feedback = await repo.get_feedback_request(session, a, world["feedback"])
        assert (feedback.status, feedback.answer) == (FeedbackStatus.PENDING, None)
        assert [m.content for m in await repo.list_chat_messages(session, a, world["chat"])] == ["call my dentist"]
        assert (await repo.list_notifications(session, a))[0].read_at is None
        assert len(await repo.list_pending_feedback(session, a)) == 1


async def test_user_a_can_use_each_own_row(sessions, world):
    """The same calls succeed for the owner, so the isolation tests above are not vacuous."""
    a = world["alice"]
    async with sessions() as session:
        assert await repo.answer_feedback_request(session, a, world["feedback"], "yes")
        assert not await repo.answer_feedback_request(session, a, world["feedback"], "again")
        assert await task_life.move(session, a, world["task"], TaskStatus.CANCELLED)
        assert await repo.mark_notification_read(session, a, world["note"])
        assert await repo.remove_dnd(session, a, "+14155550999")
        assert await repo.add_transcript(session, a, world["call"], Speaker.AGENT, "hi", 200) is not None
        await session.commit()


async def test_global_dnd_counts_tenants_not_rows(sessions, world):
    async with sessions() as session:
        assert await repo.count_dnd_tenants(session, "+14155550999") == 1
        assert await repo.add_dnd(session, world["bob"], "+14155550999")
        assert not await repo.add_dnd(session, world["bob"], "+14155550999")
        assert await repo.count_dnd_tenants(session, "+14155550999") == 2


async def test_owned_calls_keeps_only_pairs_of_a_call_and_its_own_user(sessions, world):
    """The call recorder writes a batch of many tenants' records after this one check."""
    a, b, call = world["alice"], world["bob"], world["call"]
    async with sessions() as session:
        assert await repo.owned_calls(session, [(b, call)]) == set()
        assert await repo.owned_calls(session, [(b, call), (a, call), (a, call + 999)]) == {(a, call)}
        assert await repo.owned_calls(session, []) == set()
