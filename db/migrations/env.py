"""Alembic environment: migrations run on the connection `db.migrate.upgrade` hands over."""

from alembic import context

from db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is None:
    # Plain `alembic` CLI use (e.g. `alembic revision --autogenerate`): build a sync connection.
    from sqlalchemy import create_engine

    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("alembic: set sqlalchemy.url in db/alembic.ini (or run `opendeep db upgrade`)")
    url = url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    with create_engine(url).connect() as sync_connection:
        run_migrations(sync_connection)
else:
    run_migrations(connection)
