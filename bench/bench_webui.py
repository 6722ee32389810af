"""Web UI figures: how fast a HITL question reaches an open page (hub event, and DB-only as from another
process), and how long the campaign detail (200 tasks, 400 calls with transcripts) takes to render.

    .venv/bin/python bench/bench_webui.py
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db import repo  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.models import Call, CallStatus, Speaker  # noqa: E402
from db.types import utcnow  # noqa: E402
from opendeep.passwords import hash_password  # noqa: E402
from opendeep.runtime import Runtime  # noqa: E402
from opendeep.settings import load_settings  # noqa: E402
from webui.app import WebComponent  # noqa: E402
from webui.orchestrator import confirm_plan  # noqa: E402

ROUNDS = 20


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        await upgrade(url)
        runtime = Runtime.create(load_settings({"DATABASE_URL": url, "SECRET_KEY": "bench"}, dotenv=None))
        async with runtime.sessions() as session:
            user = await repo.create_user(session, "bench", hash_password("bench-password"))
            await session.commit()
        targets = [{"name": f"Target {i}", "phone_number": f"+1415555{i:04d}", "objective": "Ask for a quote"}
                   for i in range(200)]
        plan = {"name": "Bench", "goal": "g", "calling_window": {"start": "09:00", "end": "17:00"},
                "max_attempts": 3, "targets": targets}
        started = time.perf_counter()
        confirmation = await confirm_plan(runtime.sessions, user.id, plan, "bench")
        confirm_ms = (time.perf_counter() - started) * 1000
        async with runtime.sessions() as session:
            for n, task_id in enumerate(confirmation.task_ids):
                for attempt in (1, 2):
                    call = Call(user_id=user.id, task_id=task_id, attempt_number=attempt, status=CallStatus.ENDED,
                                dialed_number=targets[n]["phone_number"])
                    session.add(call)
                    await session.flush()
                    for k in range(5):
                        await repo.add_transcript(session, user.id, call.id, Speaker.CALLEE, f"line {k}", k * 1000)
            await session.commit()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        web = WebComponent(runtime, sock=sock)
        await web.start()
        base = f"http://127.0.0.1:{web.port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            csrf = (await client.get("/api/session")).json()["csrf_token"]
            login = await client.post("/api/login", json={"username": "bench", "password": "bench-password"},
                                      headers={"x-csrf-token": csrf})
            client.headers["x-csrf-token"] = login.json()["csrf_token"]
            renders = []
            for _ in range(5):
                t0 = time.perf_counter()
                response = await client.get(f"/campaigns/{confirmation.campaign.id}")
                assert response.status_code == 200
                renders.append((time.perf_counter() - t0) * 1000)
            hub, db_only = await _hitl_latency(runtime, client, user.id)
        await web.stop()
        await runtime.close()
    print(f"confirm a 200-target plan (one transaction): {confirm_ms:.0f} ms")
    print(f"campaign page, 200 tasks / 400 calls / 2000 transcript lines: median {statistics.median(renders):.0f} ms")
    print(f"HITL question -> open page, hub event: median {statistics.median(hub):.1f} ms, max {max(hub):.1f} ms")
    print(f"HITL question -> open page, DB row only (other process): median {statistics.median(db_only):.0f} ms, "
          f"max {max(db_only):.0f} ms (goal: < 1000 ms)")


async def _hitl_latency(runtime: Runtime, client: httpx.AsyncClient, user_id: int) -> tuple[list, list]:
    async with runtime.sessions() as session:
        call = (await repo.list_calls(session, user_id, (await repo.list_tasks(session, user_id))[0].id))[0]
    arrivals: asyncio.Queue[tuple[int, float]] = asyncio.Queue()

    async def read() -> None:
        async with client.stream("GET", "/events", timeout=None) as response:
            kind = None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "feedback.asked":
                    await arrivals.put((json.loads(line[6:])["request_id"], time.perf_counter()))

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.5)
    results: dict[bool, list[float]] = {True: [], False: []}
    for publish in (True, False):
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            async with runtime.sessions() as session:
                request = await repo.create_feedback_request(session, user_id, call.id, "?",
                                                             timeout_at=utcnow() + timedelta(minutes=5))
                await session.commit()
            if publish:
                runtime.events.publish(user_id, "feedback.asked", {"request_id": request.id})
            request_id, arrived = await asyncio.wait_for(arrivals.get(), 5)
            assert request_id == request.id
            results[publish].append((arrived - t0) * 1000)
            async with runtime.sessions() as session:
                await repo.answer_feedback_request(session, user_id, request.id, "ok")
                await session.commit()
    reader.cancel()
    return results[True], results[False]


if __name__ == "__main__":
    asyncio.run(main())
