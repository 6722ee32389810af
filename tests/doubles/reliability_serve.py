"""Scenery for the crash and reconnect tests: `opendeep serve --only ...` as a subprocess that can be killed
with SIGKILL and started again on the same database and ports, a campaign seeded into that database, a calling
window open right now, and a fake model that answers the analyzer and the summarizer.

    stack = CrashableServe(tmp_path, database_url=url, only="fastagi,audiosocket,ami,aftercall")
    stack.env.update(AMI_PORT=str(fake_ami.port), OPENAI_BASE_URL=fake_openai.base_url)
    await stack.cli("db", "upgrade")
    await stack.start()            # returns once FastAGI and AudioSocket answer
    stack.kill9()                  # SIGKILL: no cleanup, no goodbye; the next start() reuses everything
    await stack.start()            # the log of each run goes to serve-<n>.log
"""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from db.engine import create_engine, session_factory
from opendeep.phone import callee_timezone
from tests.doubles.aftercall_seed import verdict
from tests.doubles.ami_helpers import make_tenant
from tests.doubles.serve_process import ServeProcess

AMI_SECRET = "reliability-secret"


class CrashableServe(ServeProcess):
    """ServeProcess with `--only`, SIGKILL, and restarts (a fresh log file per run)."""

    def __init__(self, workdir: Path, *, database_url: str, only: str, **kwargs: Any) -> None:
        super().__init__(workdir, database_url=database_url, **kwargs)
        self.only = only
        self.runs = 0
        self.env.update(AMI_SECRET=AMI_SECRET, LLM_TIMEOUT_SECONDS="5", RETRY_JITTER="0")

    async def start(self, timeout: float = 30) -> None:
        self.runs += 1
        self.log_path = self.workdir / f"serve-{self.runs}.log"
        await super().start(timeout)

    async def kill9(self) -> int:
        """kill -9: the process gets no chance to end a call, close a socket or write a row."""
        assert self.process is not None and self.process.poll() is None, "not running"
        self.process.send_signal(signal.SIGKILL)
        return await asyncio.to_thread(self.process.wait, 10)

    def all_logs(self) -> str:
        return "\n".join((self.workdir / f"serve-{n}.log").read_text(errors="replace")
                         for n in range(1, self.runs + 1) if (self.workdir / f"serve-{n}.log").exists())


def window_open_now(number: str) -> str:
    """A DEFAULT_CALLING_WINDOW around the callee's current local time (it may cross midnight)."""
    local = datetime.now(UTC).astimezone(callee_timezone(number))
    start, end = local - timedelta(hours=1), local + timedelta(hours=3)
    return f"{start:%H:%M}-{end:%H:%M}"


async def seed_campaign(database_url: str, numbers: list[str], **kwargs: Any) -> tuple[int, int, list[int]]:
    """A tenant with one campaign and a due task per number, written by the test (not by the app)."""
    engine = create_engine(database_url)
    try:
        return await make_tenant(session_factory(engine), numbers=numbers, **kwargs)
    finally:
        await engine.dispose()


def answer_as_analyzer(body: dict[str, Any]) -> dict[str, Any]:
    """FakeOpenAI responder: every call achieved its goal; every campaign gets a short summary."""
    name = body["response_format"]["json_schema"]["name"]
    if name == "call_analysis":
        return {"content": verdict("success", summary="Booked a cleaning for Tuesday 10:00.")}
    return {"content": json.dumps({"summary": "Every practice booked.", "key_findings": [], "next_steps": []})}
