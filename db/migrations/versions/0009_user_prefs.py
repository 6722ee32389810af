"""user preferences and account state: time zone, default phone region, disabled

Revision ID: 0009_user_prefs
Revises: 0008_goal
Create Date: 2026-12-02 13:20:00

- users.time_zone: the IANA zone the pages show times in (set from the browser at first login, editable on
  the account page); times are stored in UTC everywhere, this is only for display.
- users.default_region: the country (ISO 3166 alpha-2) whose national formats the user's CSV, DND and plans
  may use (e.g. US numbers without +1); empty = the DEFAULT_REGION setting.
- users.disabled_at: set by an administrator; a disabled user cannot log in, their sessions end and their
  campaigns are not dialed.
- indexes on calls for the status strip every page shows: calls in progress (status, user_id), the user's
  latest ended call (user_id, ended_at) and latest analysis (user_id, analyzed_at). Without them each page
  scanned the calls table: 300-500 ms with 100,000 calls on SQLite.
"""
from alembic import op
import sqlalchemy as sa
import db.types


revision = '0009_user_prefs'
down_revision = '0008_goal'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('time_zone', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('default_region', sa.String(length=2), nullable=True))
        batch.add_column(sa.Column('disabled_at', db.types.UTCDateTime(timezone=True), nullable=True))
    op.create_index('ix_calls_status_user', 'calls', ['status', 'user_id'])
    op.create_index('ix_calls_user_ended', 'calls', ['user_id', 'ended_at'])
    op.create_index('ix_calls_user_analyzed', 'calls', ['user_id', 'analyzed_at'])


def downgrade() -> None:
    op.drop_index('ix_calls_user_analyzed', table_name='calls')
    op.drop_index('ix_calls_user_ended', table_name='calls')
    op.drop_index('ix_calls_status_user', table_name='calls')
    with op.batch_alter_table('users') as batch:
        batch.drop_column('disabled_at')
        batch.drop_column('default_region')
        batch.drop_column('time_zone')
