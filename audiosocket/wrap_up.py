"""Finish a live call politely when its campaign's goal was met on another call.

opendeep/campaign_goal.py cancels the task and asks for a wrap-up two ways: an EventHub event (same process,
at once) and a `goal.wrap_up` call event in the database (another process decided; read every POLL_SECONDS).
Whichever comes first, the call AI gets one response instruction: thank the callee, withdraw the request and
call end_call. The call then ends the usual way (AI_ENDED: its goodbye is played, then the hangup frame). If
the AI has not ended the call within GRACE_SECONDS, the bridge ends it with its own goodbye (GOAL_MET).

Only calls of until-one-succeeds campaigns are watched; this never touches the audio path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import exists, select

from audiosocket.bridge import CallBridge, EndReason
from audiosocket.realtime import ModelConnectionLost
from db.models import CallEvent, Campaign, CampaignGoal, Task
from opendeep.campaign_goal import WRAP_UP_EVENT
from opendeep.runtime import Runtime

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
GRACE_SECONDS = 20.0          # for the AI's own thanks and goodbye
RESPONSE_WAIT_SECONDS = 5.0   # a response in progress finishes first (the API refuses a second one)
WRAP_UP_PROMPT = (
    "New instruction from the user: their goal was just met on another call, so this call's request is "
    "withdrawn. Do not book or arrange anything more. Thank the person, say briefly that the request is no "
    "longer needed (if something was already arranged on this call, ask them to cancel it), apologise for the "
    "trouble, say goodbye, then call end_call with outcome objective_not_met and a one-line summary.")


async def goal_can_wrap_up(runtime: Runtime, user_id: int, task_id: int) -> bool:
    """Whether this call belongs to an until-one-succeeds campaign (the only calls that may be wrapped up)."""
    async with runtime.sessions() as db:
        goal = await db.scalar(select(Campaign.goal_type).join(Task, Task.campaign_id == Campaign.id)
                               .where(Task.id == task_id, Task.user_id == user_id))
    return goal is CampaignGoal.UNTIL_ONE_SUCCEEDS


async def watch_for_wrap_up(runtime: Runtime, bridge: CallBridge, *, poll_seconds: float | None = None,
                            grace_seconds: float | None = None) -> None:
    """Run beside the bridge (cancelled when it ends): wrap the call up once the goal keeper asks."""
    poll_seconds = POLL_SECONDS if poll_seconds is None else poll_seconds
    grace_seconds = GRACE_SECONDS if grace_seconds is None else grace_seconds
    call = bridge.call
    if not await goal_can_wrap_up(runtime, call.user_id, call.task_id):
        return
    async with runtime.events.subscribe(call.user_id) as inbox:
        while not bridge.ended:
            if await _asked(runtime, call.user_id, call.call_id, inbox, poll_seconds):
                break
        else:
            return
    log.info("call %s: goal met on another call; asking the call AI to wrap up", call.call_id)
    bridge.recorder.event("ai.wrap_up", {"reason": "goal met on another call"})
    waited = 0.0
    while bridge.responding and waited < RESPONSE_WAIT_SECONDS and not bridge.ended:
        await asyncio.sleep(0.1)
        waited += 0.1
    if bridge.ended:
        return
    model = bridge.model
    if model is not None and not model.closed:
        with contextlib.suppress(ModelConnectionLost):
            await model.create_response(WRAP_UP_PROMPT)
    waited = 0.0
    while not bridge.ended and waited < grace_seconds:
        await asyncio.sleep(0.25)
        waited += 0.25
    if not bridge.ended:
        bridge.request_end(EndReason.GOAL_MET, f"the AI did not end the call within {grace_seconds:g} s")


async def _asked(runtime: Runtime, user_id: int, call_id: int, inbox: asyncio.Queue, wait: float) -> bool:
    """One wait: the hub event for this call within `wait` seconds, else the database's goal.wrap_up event."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    with contextlib.suppress(asyncio.TimeoutError):
        while (left := deadline - loop.time()) > 0:
            event = await asyncio.wait_for(inbox.get(), left)
            if event.kind == WRAP_UP_EVENT and event.payload.get("call_id") == call_id:
                return True
    async with runtime.sessions() as db:
        return bool(await db.scalar(select(exists().where(CallEvent.call_id == call_id,
                                                          CallEvent.user_id == user_id,
                                                          CallEvent.type == "goal.wrap_up"))))
