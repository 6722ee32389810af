"""GET /metrics over real HTTP, as Prometheus scrapes it: every metric of opendeep/metrics.py with its type, the
analyzer's queue depth read from the database, no login, nothing of any tenant, and 404 while METRICS_ENABLED
is off."""

from __future__ import annotations

import socket

import httpx
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from db import webhooks as outbox
from db.models import CallOutcome, Speaker
from opendeep.metrics import CALL_OUTCOMES, FASTAGI_SECONDS, WEBHOOK_DELIVERIES
from tests.doubles.aftercall_seed import answered_call, seed_task
from tests.doubles.webui_client import make_runtime
from webui.app import WebComponent

# The contract with dashboards: name (as the parser gives it: counters without _total) -> type.
EXPECTED = {
    "opendeep_calls_in_progress": "gauge", "opendeep_originates": "counter", "opendeep_call_outcomes": "counter",
    "opendeep_ami_connected": "gauge", "opendeep_fastagi_sessions": "counter",
    "opendeep_fastagi_session_seconds": "histogram", "opendeep_audiosocket_live_calls": "gauge",
    "opendeep_audiosocket_frame_lateness_seconds": "histogram", "opendeep_model_connect_seconds": "histogram",
    "opendeep_model_first_audio_seconds": "histogram", "opendeep_analyzer_queue_depth": "gauge",
    "opendeep_webhook_deliveries": "counter",
}
TENANT_STRINGS = ["alice-metrics", "Dr. Secret Dental", "+15557654321", "5557654321", "Book a secret cleaning",
                  "whsec_metrics-test-secret", "hooks.tenant.example"]


@pytest_asyncio.fixture
async def serve_web(settings_env, engine, sessions):
    started = []

    async def start(**env) -> str:
        runtime = make_runtime(settings_env, engine, sessions, **env)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        web = WebComponent(runtime, sock=sock)
        await web.start()
        started.append(web)
        return f"http://127.0.0.1:{web.port}"

    yield start
    for web in started:
        await web.stop()


async def test_metrics_are_scraped_over_http_with_every_metric_typed_and_no_tenant_data(
        serve_web, sessions, settings):
    # A tenant with a call the analyzer has not read yet, a webhook endpoint and a delivery.
    seeded = await seed_task(sessions, username="alice-metrics", phone="+15557654321", target="Dr. Secret Dental",
                             objective="Book a secret cleaning")
    await answered_call(sessions, settings, seeded, [(Speaker.CALLEE, "Dr. Secret Dental, hello?")])
    async with sessions() as session, session.begin():
        await outbox.add_endpoint(session, seeded.user_id, "https://hooks.tenant.example/x",
                                  "whsec_metrics-test-secret", ["call.ended"])
        await outbox.enqueue_event(session, seeded.user_id, "call.ended", {"phone_number": "+15557654321"})
    CALL_OUTCOMES.labels(outcome=CallOutcome.ANSWERED.value).inc()
    FASTAGI_SECONDS.labels(route="call-start").observe(0.004)
    WEBHOOK_DELIVERIES.labels(result="delivered").inc()

    base = await serve_web(METRICS_ENABLED="true")
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        response = await client.get("/metrics")   # no cookie, no login
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")   # Prometheus text format
    # prometheus_client adds a `<name>_created` timestamp beside each counter and histogram; the parser reads it
    # as a gauge of its own.
    families = {family.name: family for family in text_string_to_metric_families(response.text)
                if not family.name.endswith("_created")}
    assert {name: family.type for name, family in families.items()} == EXPECTED
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in families.values() for s in family.samples}
    assert samples[("opendeep_analyzer_queue_depth", ())] == 1
    assert samples[("opendeep_call_outcomes_total", (("outcome", "answered"),))] >= 1
    assert samples[("opendeep_fastagi_session_seconds_bucket", (("le", "0.005"), ("route", "call-start")))] >= 1
    assert samples[("opendeep_webhook_deliveries_total", (("result", "delivered"),))] >= 1
    for text in TENANT_STRINGS:
        assert text not in response.text
    label_names = {name for family in families.values() for s in family.samples for name in s.labels}
    assert label_names <= {"outcome", "result", "route", "le"}


async def test_metrics_are_off_by_default(serve_web):
    base = await serve_web()
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        response = await client.get("/metrics")
    assert response.status_code == 404
    assert "opendeep_" not in response.text and "METRICS_ENABLED" in response.text


def test_the_sample_grafana_dashboard_has_a_panel_for_every_metric():
    import json
    from pathlib import Path

    from opendeep.metrics import REGISTRY

    dashboard = json.loads((Path(__file__).resolve().parent.parent / "docs" / "grafana-opendeep.json").read_text())
    expressions = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    names = {family.name for family in REGISTRY.collect()}
    assert names and all(name in expressions for name in names), names


async def test_the_web_port_sends_each_answer_at_once_with_nagle_off(settings_env, engine, sessions):
    """Found measuring scrape time: uvicorn writes an answer's head and body apart, and with Nagle on (asyncio
    leaves it on for sockets made with proto 0, as WEB_BIND's is) the body waited ~40 ms for the client's delayed
    ACK on every request. The accepted connection must have TCP_NODELAY."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)   # as WebComponent makes WEB_BIND's (proto 0)
    sock.bind(("127.0.0.1", 0))
    web = WebComponent(make_runtime(settings_env, engine, sessions), sock=sock)
    await web.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web.port}", timeout=10) as client:
            assert (await client.get("/healthz")).status_code == 200
            (connection,) = web._server.server_state.connections
            server_side = connection.transport.get_extra_info("socket")
            assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        await web.stop()
