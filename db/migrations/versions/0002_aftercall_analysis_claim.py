"""after-call: post-call analyzer claim, lease and attempt count on calls

Revision ID: 0002_aftercall
Revises: 0001
Create Date: 2026-11-23 10:00:00

Two analyzers (two processes, or a restart while an LLM call is in flight) must never apply one call's
analysis twice: a claim token and a lease make the claim a conditional UPDATE, and the attempt count bounds
the retries of a call whose analysis keeps failing.
"""
from alembic import op
import sqlalchemy as sa
import db.types


revision = '0002_aftercall'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('calls') as batch:
        batch.add_column(sa.Column('analysis_claim', sa.String(length=36), nullable=True))
        batch.add_column(sa.Column('analysis_locked_until', db.types.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('analysis_attempts', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('calls') as batch:
        batch.drop_column('analysis_attempts')
        batch.drop_column('analysis_locked_until')
        batch.drop_column('analysis_claim')
