"""The "aftercall" component of `opendeep serve`: its three loops run together and stop cleanly."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta

from db import repo
from db.models import CampaignStatus, Speaker, TaskStatus
from db.types import utcnow
from opendeep.after_call import AfterCallComponent
from opendeep.events import EventHub
from opendeep.runtime import Runtime
from tests.doubles.aftercall_seed import answered_call, load, seed_task, start_call, verdict
from tests.doubles.fake_openai import FakeOpenAI


async def wait_until(check, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting for the after-call services"
        await asyncio.sleep(0.05)


async def test_the_component_recovers_analyzes_and_summarizes_then_stops(engine, sessions, settings):
    fake = FakeOpenAI()
    await fake.start()
    settings = dataclasses.replace(settings, openai_base_url=fake.base_url, llm_timeout_seconds=5.0,
                                   scheduler_poll_seconds=0.05, lifecycle_interval_seconds=0.05)

    def reply(body):  # the analyzer and the summarizer share the model server: answer by schema
        name = body["response_format"]["json_schema"]["name"]
        if name == "call_analysis":
            return {"content": verdict("success", summary="Booked Tuesday 10:00.")}
        return {"content": json.dumps({"summary": "All booked.", "key_findings": [], "next_steps": []})}
    fake.responder = reply

    booked = await seed_task(sessions, phone="+15551230001")
    await answered_call(sessions, settings, booked, [(Speaker.CALLEE, "Tuesday at ten.")])
    crashed = await seed_task(sessions, phone="+15551230002", user_id=booked.user_id,
                              campaign_id=booked.campaign_id, max_attempts=1)
    await start_call(sessions, crashed, answered=False, created_at=utcnow() - timedelta(hours=2))

    component = AfterCallComponent(Runtime(settings=settings, engine=engine, sessions=sessions, events=EventHub()))
    assert component.name == "aftercall"
    await component.start()
    loops = list(component._tasks)
    assert [t.get_name() for t in loops] == ["aftercall-lifecycle", "aftercall-analyzer", "aftercall-summarizer",
                                             "aftercall-goals"]
    try:
        async def summarized():
            async with sessions() as session:
                campaign = await repo.get_campaign(session, booked.user_id, booked.campaign_id)
                return campaign.summarized_at is not None
        await wait_until(summarized)
    finally:
        await asyncio.wait_for(component.stop(), 5)
        await fake.stop()

    assert all(loop.cancelled() for loop in loops)  # stopped by cancellation, not by a crash
    task, _ = await load(sessions, booked)
    assert task.status is TaskStatus.COMPLETED
    task, _ = await load(sessions, crashed)  # its only attempt was lost in the crash: failed, with the reason
    assert task.status is TaskStatus.FAILED and "no attempts left" in task.status_reason
    async with sessions() as session:
        campaign = await repo.get_campaign(session, booked.user_id, booked.campaign_id)
        events = [e.type for e in await repo.list_task_events(session, crashed.user_id, crashed.task_id)]
    assert campaign.status is CampaignStatus.COMPLETED and campaign.summary["generated_by"] == "llm"
    assert "lifecycle.recovered" in events
