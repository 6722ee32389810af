"""`GET /metrics`: opendeep/metrics.py's registry in Prometheus' text format, on the web port, without login,
when METRICS_ENABLED is on (404 otherwise). States and counts only: no label carries a user, number, name or text.

Gauges that are states of the database (the analyzer's queue) are read at scrape time, so they are right whichever
process runs the analyzer.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from db.models import Call, CallStatus
from opendeep.analyzer import ANALYZABLE_OUTCOMES
from opendeep.metrics import ANALYZER_QUEUE, REGISTRY
from webui.routing import HttpError

log = logging.getLogger(__name__)

DATABASE_TIMEOUT_SECONDS = 2.0


async def analyzer_queue_depth(request: Request) -> int:
    """Ended connected calls the post-call analyzer has not decided yet (all tenants: one number)."""
    async with request.app.state.runtime.sessions() as session:
        # tenant-safe: one number over all tenants for /metrics (no rows, no tenant data)
        return await session.scalar(select(func.count()).select_from(Call).where(
            Call.status == CallStatus.ENDED, Call.analyzed_at.is_(None),
            Call.outcome.in_(ANALYZABLE_OUTCOMES))) or 0


async def metrics(request: Request) -> Response:
    if not request.app.state.runtime.settings.metrics_enabled:
        raise HttpError(404, "not_found", "metrics are off (set METRICS_ENABLED=true)")
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS):
            ANALYZER_QUEUE.set(await analyzer_queue_depth(request))
    except Exception as exc:   # the other metrics still answer; the gauge keeps its last value
        log.warning("metrics: the analyzer queue depth could not be read: %r", exc)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def routes() -> list:
    return [Route("/metrics", metrics, methods=["GET"])]
