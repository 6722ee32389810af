"""FastAGI's metrics (opendeep/metrics.py): sessions by route and result, session time by route; labels only
from fixed sets, so a peer that names a route of its own cannot add label values."""

from __future__ import annotations

from fastagi_server.server import FastAgiServer
from opendeep.metrics import REGISTRY
from tests.doubles.agi_client import TEST_FASTAGI_SECRET, FakeAsteriskAgi


def _sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_sessions_are_counted_by_route_and_result_and_timed():
    async def call_start(agi):
        await agi.set_variables({"OPENDEEP_RING_SECONDS": "30", "OPENDEEP_DIAL": "PJSIP/1@trunk"})

    server = FastAgiServer({"call-start": call_start}, "127.0.0.1", 0, secret=TEST_FASTAGI_SECRET)
    port = await server.start()
    before = {result: _sample("opendeep_fastagi_sessions_total", route="call-start", result=result)
              for result in ("ok", "refused")}
    timed = _sample("opendeep_fastagi_session_seconds_count", route="call-start")
    other = _sample("opendeep_fastagi_sessions_total", route="other", result="refused")
    try:
        assert (await FakeAsteriskAgi(port, script="call-start").run()).agi_status == "SUCCESS"
        await FakeAsteriskAgi(port, script="call-start", secret="wrong-secret-0123456789").run()
        await FakeAsteriskAgi(port, script="made-up-route").run()   # unknown route: counted as "other"
    finally:
        await server.stop()
    assert _sample("opendeep_fastagi_sessions_total", route="call-start", result="ok") == before["ok"] + 1
    assert _sample("opendeep_fastagi_sessions_total", route="call-start", result="refused") == before["refused"] + 1
    assert _sample("opendeep_fastagi_session_seconds_count", route="call-start") == timed + 1
    assert _sample("opendeep_fastagi_sessions_total", route="other", result="refused") == other + 1
    assert _sample("opendeep_fastagi_sessions_total", route="made-up-route", result="refused") == 0
