"""A database that cannot be reached is one line per try in the background loops and at `serve`'s start, not a
traceback storm; a bug still logs its traceback (issue 15, item 15). The errors are the driver's own: an engine
pointed at a port where nobody listens."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text

from db.engine import create_engine
from opendeep.dberrors import sqlite_folder_problem, unreachable_reason
from opendeep.periodic import log_pass_failure
from opendeep.serve import wait_for_database

CLOSED = "postgresql+asyncpg://opendeep:s3cret-pw@127.0.0.1:9/opendeep"


async def _connection_error() -> Exception:
    engine = create_engine(CLOSED)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:   # noqa: BLE001 - the error itself is what is tested
        return exc
    finally:
        await engine.dispose()
    raise AssertionError("port 9 answered")


async def test_a_pass_failing_on_an_unreachable_database_logs_one_line_without_traceback(caplog):
    error = await _connection_error()
    assert "Connect call failed" in unreachable_reason(error)
    logger = logging.getLogger("test.periodic")
    with caplog.at_level(logging.WARNING, logger="test.periodic"):
        log_pass_failure(logger, "scheduler pass", error, 2.0)
        log_pass_failure(logger, "scheduler pass", KeyError("task_id"), 2.0)
    unreachable, bug = caplog.records
    assert unreachable.levelno == logging.WARNING and unreachable.exc_info is None
    assert unreachable.getMessage().startswith("scheduler pass: cannot use the database (")
    assert "\n" not in unreachable.getMessage()
    assert bug.levelno == logging.ERROR and bug.exc_info is not None   # a bug keeps its traceback
    assert unreachable_reason(KeyError("x")) is None


async def test_serve_waits_for_the_database_with_one_line_per_try(settings, caplog):
    from dataclasses import replace

    from opendeep.runtime import Runtime

    runtime = Runtime.create(replace(settings, database_url=CLOSED))
    stop = asyncio.Event()
    tries: list[logging.LogRecord] = []

    class StopAfterThree(logging.Handler):
        def emit(self, record):
            tries.append(record)
            if len(tries) == 3:
                stop.set()

    handler = StopAfterThree(logging.WARNING)
    logging.getLogger("opendeep.serve").addHandler(handler)
    try:
        assert await wait_for_database(runtime, stop, first_wait=0.01, max_wait=0.02) is False
    finally:
        logging.getLogger("opendeep.serve").removeHandler(handler)
        await runtime.close()
    assert len(tries) == 3
    for record in tries:
        message = record.getMessage()
        assert record.exc_info is None and "\n" not in message
        assert message.startswith("waiting for the database: cannot use the database at "
                                  "postgresql+asyncpg://opendeep:***@127.0.0.1:9/opendeep: ")
        assert "s3cret-pw" not in message


def test_a_sqlite_file_in_a_missing_folder_is_named(tmp_path):
    assert sqlite_folder_problem(f"sqlite+aiosqlite:///{tmp_path}/x.db") is None
    assert sqlite_folder_problem("sqlite+aiosqlite:///opendeep.db") is None   # the working directory
    assert sqlite_folder_problem(CLOSED) is None
    problem = sqlite_folder_problem(f"sqlite+aiosqlite:///{tmp_path}/missing/x.db")
    assert problem == (f"the SQLite database {tmp_path}/missing/x.db is in a folder that does not exist "
                       f"({tmp_path}/missing): create it (mkdir -p {tmp_path}/missing) or change DATABASE_URL")
