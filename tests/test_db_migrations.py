"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from db.models import Base


async def test_migrated_schema_matches_the_models(engine):
    async with engine.connect() as connection:
        def diff(sync_connection):
            context = MigrationContext.configure(sync_connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
        differences = await connection.run_sync(diff)
        version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    assert differences == []
    assert version is not None
