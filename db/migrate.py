"""Run Alembic migrations from code (`opendeep db upgrade`, `make run`, tests) with no alembic.ini."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from db.engine import create_engine

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


async def upgrade(database_url: str, revision: str = "head", engine: AsyncEngine | None = None) -> None:
    """Bring the schema at `database_url` to `revision`."""
    # Alembic logs its plugin set-up and context at INFO on every run (7 lines when nothing changes); below
    # DEBUG only its warnings show. Each migration applied is still logged, by us, in one line.
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("alembic").setLevel(logging.WARNING)
    own_engine = engine is None
    engine = engine or create_engine(database_url)
    config = alembic_config(database_url)
    try:
        async with engine.begin() as connection:
            def _run(sync_connection):
                config.attributes["connection"] = sync_connection
                before = MigrationContext.configure(sync_connection).get_current_revision()
                command.upgrade(config, revision)
                after = MigrationContext.configure(sync_connection).get_current_revision()
                if after != before:
                    log.info("database schema migrated from %s to %s", before or "empty", after)
            await connection.run_sync(_run)
    finally:
        if own_engine:
            await engine.dispose()
