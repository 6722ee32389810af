"""db/typed.py: a DML result's rowcount and a model's Table, checked at run time (on SQLite and PostgreSQL)."""

import pytest
from sqlalchemy import Table, select, update

from db import repo
from db.models import Campaign, Task
from db.typed import rows_changed, table_of


async def test_rows_changed_counts_what_an_update_matched_and_refuses_a_select(sessions):
    async with sessions() as session, session.begin():
        user = await repo.create_user(session, "typed-owner", "hash")
        first = await repo.create_campaign(session, user.id, name="first")
        await repo.create_campaign(session, user.id, name="second")
        renamed = await session.execute(update(Campaign).where(Campaign.user_id == user.id).values(goal="g"))
        assert rows_changed(renamed) == 2
        none = await session.execute(update(Campaign).where(Campaign.id == first.id + 1000).values(goal="g"))
        assert rows_changed(none) == 0
        with pytest.raises(TypeError, match="UPDATE/DELETE/INSERT"):
            rows_changed(await session.execute(select(Campaign.id)))


def test_table_of_gives_the_mapped_table():
    table = table_of(Task)
    assert isinstance(table, Table) and table.name == Task.__tablename__
