"""GET /healthz, what monitoring sees of one `opendeep serve` process: 200 only while the database answers and
every component it runs works (the AMI controller logged in to Asterisk, the servers listening, the loops
running); 503 naming the part that does not, otherwise. No login, and nothing of any tenant in it."""

from __future__ import annotations

import asyncio

import httpx

from db.engine import create_engine, session_factory
from opendeep.events import EventHub
from opendeep.runtime import Runtime
from opendeep.serve import COMPONENTS, serve
from opendeep.settings import load_settings
from tests.doubles.ami_helpers import eventually
from tests.doubles.fake_ami import FakeAmi
from tests.doubles.serve_process import free_port
from tests.doubles.webui_client import WebClient
from webui.app import create_app


async def test_healthy_while_logged_in_to_asterisk_and_503_naming_ami_when_asterisk_goes(settings_env, engine):
    fake = FakeAmi(username="opendeep", secret="secret")
    ami_port = await fake.start()
    web = free_port()
    settings = load_settings({
        **settings_env, "WEB_BIND": f"127.0.0.1:{web}", "FASTAGI_BIND": f"127.0.0.1:{free_port()}",
        "AUDIOSOCKET_BIND": f"127.0.0.1:{free_port()}", "AMI_PORT": str(ami_port), "AMI_SECRET": "secret",
        "AMI_RECONNECT_MAX_SECONDS": "1", "SCHEDULER_POLL_SECONDS": "0.2"}, dotenv=None)
    runtime = Runtime(settings=settings, engine=engine, sessions=session_factory(engine), events=EventHub())
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(runtime, list(COMPONENTS), stop))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web}", timeout=5) as client:
            async def health(expected: int) -> dict | None:
                try:
                    response = await client.get("/healthz")
                except httpx.TransportError:   # the web component is not up yet
                    return None
                return response.json() if response.status_code == expected else None

            report = await eventually(lambda: health(200), timeout=15, what="/healthz 200")
            assert report["status"] == "ok"
            assert report["database"]["ok"] and report["database"]["dialect"] == engine.dialect.name
            assert set(report["components"]) == set(COMPONENTS)
            assert all(state["ok"] for state in report["components"].values())
            ami, aftercall = report["components"]["ami"], report["components"]["aftercall"]
            assert ami == {"ok": True, "asterisk": f"127.0.0.1:{ami_port}", "connected": True, "scheduler": True,
                           "scheduler_passes": ami["scheduler_passes"]}
            assert report["components"]["audiosocket"]["live_calls"] == 0
            assert aftercall == {"ok": True, "lifecycle": True, "analyzer": True, "summarizer": True,
                                 "goals": True, "lifecycle_passes": aftercall["lifecycle_passes"]}
            # Passes are counted as they finish (the loops keep running).
            later = await eventually(lambda: health(200), timeout=15, what="/healthz 200")
            assert later["components"]["aftercall"]["lifecycle_passes"] >= aftercall["lifecycle_passes"] >= 1

            await fake.stop()   # Asterisk goes away: the controller reconnects with backoff
            report = await eventually(lambda: health(503), timeout=10, what="/healthz 503")
            assert report["status"] == "degraded"
            assert report["components"]["ami"]["connected"] is False
            assert [name for name, state in report["components"].items() if not state["ok"]] == ["ami"]

            await fake.start(ami_port)   # and comes back
            await eventually(lambda: health(200), timeout=15, what="/healthz 200 again")
    finally:
        stop.set()
        await asyncio.wait_for(serving, 30)
        await fake.stop()
    assert runtime.components == {}


async def test_a_database_that_does_not_answer_is_503_without_its_address():
    url = "postgresql+asyncpg://opendeep:hunter2@127.0.0.1:1/opendeep"   # nothing listens on port 1
    settings = load_settings({"DATABASE_URL": url, "SECRET_KEY": "test"}, dotenv=None)
    engine = create_engine(url)
    runtime = Runtime(settings=settings, engine=engine, sessions=session_factory(engine), events=EventHub())
    client = WebClient(create_app(runtime))
    try:
        response = await client.http.get("/healthz")
    finally:
        await client.aclose()
        await engine.dispose()
    assert response.status_code == 503
    assert response.headers["cache-control"] == "no-store"
    report = response.json()
    assert report["status"] == "degraded" and report["components"] == {}
    assert report["database"] == {"ok": False, "dialect": "postgresql", "error": report["database"]["error"]}
    assert report["database"]["error"] in {"ConnectionRefusedError", "OSError", "timeout"}
    assert "hunter2" not in response.text and "127.0.0.1" not in response.text


async def test_a_database_that_accepts_and_stays_silent_is_503_timeout_within_the_limit():
    """A hung database (the TCP connection is accepted, nothing is ever answered) must not hang /healthz."""
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    url = f"postgresql+asyncpg://opendeep@127.0.0.1:{silent.sockets[0].getsockname()[1]}/opendeep"
    engine = create_engine(url)
    runtime = Runtime(settings=load_settings({"DATABASE_URL": url, "SECRET_KEY": "test"}, dotenv=None),
                      engine=engine, sessions=session_factory(engine), events=EventHub())
    client = WebClient(create_app(runtime))
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        response = await client.http.get("/healthz")
    finally:
        await client.aclose()
        await engine.dispose()
        silent.close()
    assert loop.time() - started < 5   # DATABASE_TIMEOUT_SECONDS is 2 s
    assert response.status_code == 503
    assert response.json()["database"] == {"ok": False, "dialect": "postgresql", "error": "timeout"}
