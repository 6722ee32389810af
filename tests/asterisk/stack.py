"""The real product against the real Asterisk: `opendeep serve` as a subprocess (real sockets), the private
Asterisk of the test session with the dialplan and AMI user that `opendeep dialplan render` wrote, and the fake
OpenAI server (chat and Realtime) that the real SDK reaches by base_url.

    stack = RealStack(asterisk, tmp_path, database_url)
    await stack.start()
    campaign_id, [task_id] = await stack.import_campaign([("Callee", "+14155550101")])
    task = await stack.wait_task(task_id, "completed")
    await stack.stop()
"""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.engine import create_engine
from db.models import Call, CallEvent, CallTranscript, Task
from tests.asterisk.instance import AsteriskInstance
from tests.asterisk.observer import AmiObserver
from tests.doubles.ami_helpers import eventually
from tests.doubles.fake_openai import FakeOpenAI, ScriptedModels
from tests.doubles.serve_process import ServeProcess

USER, PASSWORD = "alice", "correct horse battery staple"
DIAL_TEMPLATE = "Local/{digits}@opendeep-test-callees"   # tests/asterisk/extensions_test.conf
# The test callees (tests/asterisk/extensions_test.conf).
ANSWERS = "+14155550101"
BUSY = "+14155550102"
NO_ANSWER = "+14155550103"
CONGESTED = "+14155550104"
IVR = "+14155550105"
PERSON = "+14155550106"
HANGS_UP_FIRST = "+14155550107"
ANSWERING_MACHINE = "+14155550108"
SPEAKS_LATER = "+14155550109"
MACHINE_WITH_BEEP = "+14155550130"   # a greeting, the beep, then it records (silence)


class RealStack:
    def __init__(self, asterisk: AsteriskInstance, workdir: Path, database_url: str, *,
                 models: ScriptedModels | None = None, env: dict[str, str] | None = None) -> None:
        self.asterisk = asterisk
        self.workdir = Path(workdir)
        self.models = models or ScriptedModels(targets=(("Test callee", ANSWERS),))
        self.fake = self.models.install(FakeOpenAI())
        self.serve = ServeProcess(self.workdir, database_url=database_url, extra_env={
            "AMI_PORT": str(asterisk.ami_port), "DIAL_STRING_TEMPLATE": DIAL_TEMPLATE,
            "DEFAULT_CALLING_WINDOW": "00:00-23:59", "ORIGINATE_TIMEOUT_SECONDS": "6",
            "HITL_TIMEOUT_SECONDS": "30", "RETRY_JITTER": "0", **(env or {})})
        self.observer = AmiObserver(asterisk.ami_port)
        self.http: httpx.AsyncClient | None = None
        self.csrf = ""

    @property
    def database_url(self) -> str:
        return self.serve.env["DATABASE_URL"]

    async def start(self, *, render_args: tuple[str, ...] = ()) -> None:
        self.serve.env["OPENAI_BASE_URL"] = await self.fake.start()
        await self.observer.start()
        await self.install_dialplan(*render_args)
        await self.serve.cli("db", "upgrade")
        await self.serve.cli("user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
        await self.serve.start()
        self.http = httpx.AsyncClient(base_url=self.serve.web_url, timeout=10)
        await self.wait_ami_connected()
        await self._login()

    async def install_dialplan(self, *render_args: str) -> None:
        """`opendeep dialplan render --out DIR`, then the files into Asterisk and a reload, as an admin does."""
        out = self.workdir / "rendered"
        await self.serve.cli("dialplan", "render", "--out", str(out), *render_args)
        files = {path.name: path.read_text(encoding="utf-8") for path in out.iterdir()}
        await asyncio.to_thread(self.asterisk.install_opendeep, files)

    async def wait_ami_connected(self, timeout: float = 20) -> None:
        async def ami_ok() -> bool:
            try:
                report = (await self.http.get("/healthz")).json()
            except (httpx.HTTPError, ValueError):
                return False
            return bool(report.get("components", {}).get("ami", {}).get("ok"))
        await eventually(ami_ok, timeout, 0.2, what="OpenDeep logged in to Asterisk's AMI")

    async def stop(self) -> int | None:
        try:
            if self.http is not None:
                await self.http.aclose()
            return await self.serve.stop()
        finally:
            self.serve.kill()
            await self.observer.stop()
            await self.fake.stop()

    # ------------------------------------------------------------------ the JSON API, as a user

    async def _login(self) -> None:
        self.csrf = (await self.http.get("/api/session")).json()["csrf_token"]
        response = await self.http.post("/api/login", json={"username": USER, "password": PASSWORD},
                                        headers={"x-csrf-token": self.csrf})
        assert response.status_code == 200, response.text
        self.csrf = response.json()["csrf_token"]

    async def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"x-csrf-token": self.csrf, **kwargs.pop("headers", {})}
        return await self.http.request(method, path, headers=headers, **kwargs)

    async def import_campaign(self, targets: list[tuple[str, str]], *, max_attempts: int = 1,
                              name: str = "Real Asterisk") -> tuple[int, list[int]]:
        body = io.StringIO()
        writer = csv.writer(body)
        writer.writerow(["name", "phone_number", "objective", "max_attempts"])
        for target_name, number in targets:
            writer.writerow([target_name, number, "Ask whether they are open on Sunday.", max_attempts])
        response = await self.api("POST", f"/api/campaigns/import?name={name}", content=body.getvalue(),
                                  headers={"content-type": "text/csv"})
        assert response.status_code == 201, response.text
        return response.json()["campaign_id"], response.json()["task_ids"]

    async def task(self, task_id: int) -> dict[str, Any]:
        return (await self.api("GET", f"/api/tasks/{task_id}")).json()

    async def wait_task(self, task_id: int, *statuses: str, timeout: float = 40) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            task = await self.task(task_id)
            return task if task["status"] in statuses else None
        return await eventually(reached, timeout, 0.2, what=f"task {task_id} to be {' or '.join(statuses)}")

    # ------------------------------------------------------------------ the database, as it was written

    async def call_rows(self, task_id: int) -> list[tuple[Call, list[CallEvent], list[CallTranscript]]]:
        engine = create_engine(self.database_url)
        try:
            async with AsyncSession(engine) as db:
                calls = (await db.scalars(select(Call).where(Call.task_id == task_id).order_by(Call.id))).all()
                found = []
                for call in calls:
                    events = (await db.scalars(select(CallEvent).where(CallEvent.call_id == call.id)
                                               .order_by(CallEvent.at, CallEvent.id))).all()
                    lines = (await db.scalars(select(CallTranscript).where(CallTranscript.call_id == call.id)
                                              .order_by(CallTranscript.offset_ms))).all()
                    found.append((call, list(events), list(lines)))
                return found
        finally:
            await engine.dispose()

    async def task_row(self, task_id: int) -> Task:
        engine = create_engine(self.database_url)
        try:
            async with AsyncSession(engine) as db:
                return await db.get(Task, task_id)
        finally:
            await engine.dispose()
