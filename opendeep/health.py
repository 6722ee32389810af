"""What `GET /healthz` reports: whether this `opendeep serve` process does its job, for monitoring (systemd, a
load balancer, Nagios). Healthy when the database answers and every component the process runs says it is:
the FastAGI and AudioSocket servers listen, the AMI controller is logged in to Asterisk and its scheduler runs,
the after-call loops run. States and counts only, nothing of any tenant: the endpoint needs no login."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy import text

from opendeep.runtime import Runtime

log = logging.getLogger(__name__)

DATABASE_TIMEOUT_SECONDS = 2.0


async def health_report(runtime: Runtime) -> tuple[bool, dict[str, Any]]:
    """(healthy, report). A component without `health()` is healthy while it runs."""
    components = {name: component.health() if hasattr(component, "health") else {"ok": True}
                  for name, component in runtime.components.items()}
    database = await _database(runtime)
    healthy = database["ok"] and all(state["ok"] for state in components.values())
    return healthy, {"status": "ok" if healthy else "degraded", "database": database, "components": components}


async def _database(runtime: Runtime) -> dict[str, Any]:
    dialect = runtime.engine.dialect.name
    started = time.perf_counter()
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS):
            async with runtime.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    except Exception as exc:   # the detail goes to the log, not to an unauthenticated page
        log.warning("health check: database %s does not answer: %r", dialect, exc)
        reason = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
        return {"ok": False, "dialect": dialect, "error": reason}
    return {"ok": True, "dialect": dialect, "ms": round((time.perf_counter() - started) * 1000, 1)}


def task_running(task: asyncio.Task | None) -> bool:
    return task is not None and not task.done()
