"""task life: on hold is a state that is not due, not a far-future date

Revision ID: 0011_task_life
Revises: 0010_calllog
Create Date: 2026-12-02 14:45:00

Before, a paused task (webui/controls.py) was put on hold until 2999-01-01 and a task held for review
(opendeep/analyzer.py) until 9999-12-31, because ON_HOLD counted as due. db/task_life.py makes ON_HOLD not due,
so those dates mean nothing any more and would show as "call at 2999-01-01": each such task's next action time
becomes the time it was put on hold (its updated_at). A paused task's own time is kept in context["paused"] and
restored on resume, as before. No schema change; the downgrade has nothing to undo (an on-hold task's time is
never read to decide whether it is due).
"""
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from db.types import UTCDateTime

revision = '0011_task_life'
down_revision = '0010_calllog'
branch_labels = None
depends_on = None

FAR_FUTURE = datetime(2999, 1, 1, tzinfo=UTC)


def upgrade() -> None:
    tasks = sa.table('tasks', sa.column('status', sa.String), sa.column('next_action_time', UTCDateTime()),
                     sa.column('updated_at', UTCDateTime()))
    op.execute(tasks.update()
               .where(tasks.c.status == 'on_hold', tasks.c.next_action_time >= sa.bindparam('far', FAR_FUTURE,
                                                                                          UTCDateTime()))
               .values(next_action_time=tasks.c.updated_at))


def downgrade() -> None:
    pass
