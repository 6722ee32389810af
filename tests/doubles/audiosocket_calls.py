"""Test scenery for the AudioSocket part: a seeded answered call, a Runtime pointed at the fake realtime
model, the AudioSocket server on a free port, and an Asterisk-like client for the call."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from audiosocket.server import AudioSocketServer
from db import repo
from db.models import Call, CallStatus, TaskStatus
from db.types import utcnow
from opendeep.events import EventHub
from opendeep.runtime import Runtime
from opendeep.settings import load_settings
from tests.doubles.audiosocket_client import AsteriskAudioSocket

CALLEE_CHANNEL = "PJSIP/opendeep-trunk-00000007"


@dataclass
class SeededCall:
    user_id: int
    task_id: int
    call_id: int
    as_uuid: str


async def seed_call(sessions: async_sessionmaker[AsyncSession], *, username: str = "alice",
                    channel: str | None = CALLEE_CHANNEL) -> SeededCall:
    """A user, campaign, in-progress task and an answered call with an AudioSocket UUID (as call-start and
    call-answered leave them)."""
    async with sessions() as db, db.begin():
        user = await repo.create_user(db, username, "x", profile={"name": "Alice Example", "city": "Berlin"})
        campaign = await repo.create_campaign(db, user.id, name="Dentists", goal="Book a check-up",
                                              master_prompt="Be brief.")
        task = await repo.add_task(db, user.id, campaign.id, target_name="Dr. Smile", phone_number="+4930123456",
                                   objective="Book a dental check-up next week", context={"insurance": "public"})
        task.status = TaskStatus.IN_PROGRESS
        task.attempt_count = 1
        task.inter_call_context = "First attempt: the receptionist asked us to call after 10 am."
        as_uuid = str(uuid.uuid4())
        call = Call(user_id=user.id, task_id=task.id, attempt_number=1, status=CallStatus.ANSWERED,
                    dialed_number="+4930123456", channel=channel, audiosocket_uuid=as_uuid, answered_at=utcnow())
        db.add(call)
        await db.flush()
        return SeededCall(user.id, task.id, call.id, as_uuid)


def make_runtime(settings_env: dict[str, str], engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession],
                 base_url: str, ami: Any = None, **env: str) -> Runtime:
    settings = load_settings({**settings_env, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "test-key",
                              "AUDIOSOCKET_BIND": "127.0.0.1:9092", **env}, dotenv=None)
    return Runtime(settings=settings, engine=engine, sessions=sessions, events=EventHub(), ami=ami)


@asynccontextmanager
async def audiosocket_server(runtime: Runtime, **kwargs: Any) -> AsyncIterator[AudioSocketServer]:
    server = AudioSocketServer(runtime, host="127.0.0.1", port=0, **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def asterisk_call(server: AudioSocketServer, as_uuid: str) -> AsyncIterator[AsteriskAudioSocket]:
    client = AsteriskAudioSocket(server.port, as_uuid)
    await client.connect()
    try:
        yield client
    finally:
        await client.close()
