"""best of several: the campaign goal best_of and its decision

Revision ID: 0012_best_of
Revises: 0011_task_life
Create Date: 2026-12-02 14:40:00

- campaigns.goal_type may be best_of (a VARCHAR: native_enum=False, no CHECK constraint, so no ALTER of values).
- campaigns.best_criterion / best_decide / best_then: what "best" means, who decides (ai | user), what follows
  (report_only | book_with_chosen), from the plan.
- campaigns.best_choice (JSON) and best_decided_at: the choice, written once (conditional on best_decided_at NULL).
- campaigns.best_asked_at: when the user was asked to choose (asked and notified once).
- campaigns.best_followup_task_id: the task that calls the chosen target back to accept its offer.
"""
import sqlalchemy as sa
from alembic import op

import db.types


revision = '0012_best_of'
down_revision = '0011_task_life'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('campaigns') as batch:
        batch.add_column(sa.Column('best_criterion', sa.Text(), nullable=True))
        batch.add_column(sa.Column('best_decide', sa.String(length=8), nullable=True))
        batch.add_column(sa.Column('best_then', sa.String(length=24), nullable=True))
        batch.add_column(sa.Column('best_choice', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('best_decided_at', db.types.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('best_asked_at', db.types.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('best_followup_task_id', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('campaigns') as batch:
        for column in ('best_followup_task_id', 'best_asked_at', 'best_decided_at', 'best_choice', 'best_then',
                       'best_decide', 'best_criterion'):
            batch.drop_column(column)
