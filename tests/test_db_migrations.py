"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from db.models import Base


def _exists_on(obj, dialect: str) -> bool:
    """False for a model object made only on other databases (`.ddl_if(dialect=...)`, e.g. a trigram index)."""
    ddl_if = getattr(obj, "_ddl_if", None)
    return ddl_if is None or ddl_if.dialect is None or ddl_if.dialect == dialect


async def test_migrated_schema_matches_the_models(engine):
    async with engine.connect() as connection:
        def diff(sync_connection):
            dialect = sync_connection.dialect.name
            context = MigrationContext.configure(sync_connection, opts={
                "compare_type": True, "include_object": lambda obj, *_: _exists_on(obj, dialect)})
            return compare_metadata(context, Base.metadata)
        differences = await connection.run_sync(diff)
        version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    assert differences == []
    assert version is not None
