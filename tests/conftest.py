"""Shared fixtures. Every database test runs twice: on SQLite (a temp file) and on PostgreSQL (a database
created for this test run on 127.0.0.1:5432, dropped at the end).

OPENDEEP_TEST_PG_URL overrides the PostgreSQL server URL (default: postgresql+asyncpg://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid

import pytest
import pytest_asyncio
from sqlalchemy import text

from db.engine import create_engine, session_factory
from db.migrate import upgrade
from db.models import Base
from opendeep.settings import load_settings
from tests.doubles.fake_openai import FakeOpenAI
from tests.doubles.fake_realtime import FakeRealtime

PG_ADMIN_URL = os.environ.get("OPENDEEP_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


def _pg_url_for(database: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


async def _pg_admin(statement: str) -> None:
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_database_url():
    """A fresh, migrated PostgreSQL database for this test run."""
    name = f"opendeep_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except OSError as exc:  # pragma: no cover - CI starts PostgreSQL before the tests
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    url = _pg_url_for(name)
    asyncio.run(upgrade(url))
    yield url
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_database_url(tmp_path_factory):
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'opendeep.db'}"
    asyncio.run(upgrade(url))
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    """The URL of a migrated database; each test using it runs on both backends."""
    return request.getfixturevalue("pg_database_url" if request.param == "postgresql" else "sqlite_database_url")


async def _empty_all_tables(engine) -> None:
    async with engine.begin() as connection:
        tables = list(reversed(Base.metadata.sorted_tables))
        if engine.dialect.name == "postgresql":
            names = ", ".join(f'"{table.name}"' for table in tables)
            await connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                await connection.execute(table.delete())


@pytest_asyncio.fixture
async def engine(database_url):
    """An engine on an empty, migrated database (SQLite and PostgreSQL)."""
    engine = create_engine(database_url)
    await _empty_all_tables(engine)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture
async def pg_engine(pg_database_url):
    """PostgreSQL only: for tests of PostgreSQL behaviour (SKIP LOCKED claims)."""
    engine = create_engine(pg_database_url)
    await _empty_all_tables(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine):
    return session_factory(engine)


@pytest.fixture
def settings_env(database_url):
    """Environment for load_settings() in tests: the test database, no .env, nothing external."""
    from tests.doubles.agi_client import TEST_FASTAGI_SECRET

    return {"DATABASE_URL": database_url, "SECRET_KEY": "test-secret", "RETRY_JITTER": "0",
            "FASTAGI_SECRET": TEST_FASTAGI_SECRET}


@pytest.fixture
def settings(settings_env):
    return load_settings(settings_env, dotenv=None)


@pytest_asyncio.fixture
async def realtime():
    """A fake OpenAI Realtime WebSocket server; the SDK connects to `realtime.base_url`."""
    fake = FakeRealtime()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def scene(settings_env, engine, sessions, realtime):
    """`scene(**env)` -> a Runtime on the test database whose call AI talks to the fake Realtime server."""
    from tests.doubles.audiosocket_calls import make_runtime

    def build(**env):
        return make_runtime(settings_env, engine, sessions, realtime.base_url, **env)
    return build


@pytest_asyncio.fixture
async def fake_openai():
    """A fake OpenAI HTTP server (chat completions); the SDK reaches it at `fake_openai.base_url`."""
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def llm_settings(settings, fake_openai):
    """Settings whose LLM is the fake OpenAI server."""
    return dataclasses.replace(settings, openai_base_url=fake_openai.base_url, llm_timeout_seconds=5.0)


# ---------------------------------------------------------------- a real Asterisk 22 (tests/asterisk/)

REQUIRE_ASTERISK = os.environ.get("OPENDEEP_REQUIRE_ASTERISK", "") not in ("", "0", "false")


def pytest_report_header(config):
    from tests.asterisk.instance import asterisk_version, find_asterisk

    binary, reason = find_asterisk()
    if binary is None:
        return [f"real Asterisk: none, its tests are skipped ({reason}). To run them: install Asterisk >= 22 and "
                f"set ASTERISK_BIN, or put the source tarball at ../shared/asterisk/ (or ASTERISK_TARBALL)"]
    return [f"real Asterisk: {binary} ({asterisk_version(binary)})"]


@pytest.fixture(scope="session")
def asterisk_instance(tmp_path_factory):
    """A private Asterisk for the whole test session (tests/asterisk/instance.py)."""
    from tests.asterisk.instance import AsteriskInstance, find_asterisk

    binary, reason = find_asterisk()
    if binary is None:
        if REQUIRE_ASTERISK:
            pytest.fail(f"OPENDEEP_REQUIRE_ASTERISK is set but there is no Asterisk: {reason}")
        pytest.skip(f"no real Asterisk: {reason}")
    instance = AsteriskInstance(binary, tmp_path_factory.mktemp("asterisk"))
    instance.start()
    yield instance
    instance.stop()


class AsteriskUnderTest:
    """The session's Asterisk as one test sees it: `expect_log(pattern, why)` names a WARNING / ERROR line this
    test provokes on purpose; any other one fails the test."""

    def __init__(self, instance) -> None:
        self.instance = instance
        self.expected: list[tuple[str, str]] = []
        self.mark = instance.log_mark()

    def __getattr__(self, name):
        return getattr(self.instance, name)

    def expect_log(self, pattern: str, why: str) -> None:
        self.expected.append((pattern, why))

    def unexpected_problems(self) -> list[str]:
        import re

        return [line for line in self.instance.problems_since(self.mark)
                if not any(re.search(pattern, line) for pattern, _ in self.expected)]


@pytest.fixture
def asterisk(asterisk_instance, request):
    """The real Asterisk for one test; a WARNING or ERROR it logs during the test fails the test."""
    if not asterisk_instance.running:   # a test before this one killed it on purpose
        asterisk_instance.start()
    under_test = AsteriskUnderTest(asterisk_instance)
    yield under_test
    problems = under_test.unexpected_problems()
    if problems:
        pytest.fail("Asterisk logged WARNING/ERROR lines this test did not expect:\n" + "\n".join(problems)
                    + f"\n--- last lines of {asterisk_instance.logdir / 'full'}:\n" + asterisk_instance.log_tail(60),
                    pytrace=False)


@pytest.fixture
async def make_stack(asterisk, tmp_path):
    """`await make_stack(**env)` -> a started RealStack (tests/asterisk/stack.py) on the session's Asterisk; each
    one is stopped after the test, which fails if `opendeep serve` did not exit cleanly or logged a traceback."""
    from tests.asterisk.stack import RealStack

    made = []

    async def build(**env: str):
        stack = RealStack(asterisk, tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}", env=env)
        made.append(stack)
        await stack.start()
        return stack
    yield build
    for stack in made:
        code = await stack.stop()
        assert code == 0, stack.serve.log_text()
        assert "Traceback" not in stack.serve.log_text(), stack.serve.log_text()
