"""callbacks and voicemail: inbound calls, the per-user callback fallback, the campaign's voicemail plan

Revision ID: 0007_callbacks
Revises: 0006_cost
Create Date: 2026-12-02 13:30:00

- calls.direction: outbound (OpenDeep dialed) or inbound (the callee rang back; fastagi_server/callbacks.py).
- ix_calls_number_started: a callback finds the latest call to the caller's number within CALLBACK_WINDOW_DAYS.
- users.callback_ai / users.callback_fallback_target_id: whether the call AI answers callbacks, and which of the
  user's transfer targets gets those it does not take (NULL: a polite message, then hangup).
- campaigns.voicemail_action / tasks.voicemail_message: when a machine answers, hang up (as before) or leave the
  task's message after the beep (outcome voicemail_left, a new value of calls.outcome, a non-native enum).
"""
from alembic import op
import sqlalchemy as sa


revision = '0007_callbacks'
down_revision = '0006_cost'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('calls') as batch:
        batch.add_column(sa.Column('direction', sa.String(length=32), nullable=False, server_default='outbound'))
    op.create_index('ix_calls_number_started', 'calls', ['dialed_number', 'started_at'])
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('callback_ai', sa.Boolean(), nullable=False, server_default=sa.true()))
        batch.add_column(sa.Column('callback_fallback_target_id', sa.Integer(), nullable=True))
    with op.batch_alter_table('campaigns') as batch:
        batch.add_column(sa.Column('voicemail_action', sa.String(length=32), nullable=False,
                                   server_default='hang_up'))
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('voicemail_message', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.drop_column('voicemail_message')
    with op.batch_alter_table('campaigns') as batch:
        batch.drop_column('voicemail_action')
    with op.batch_alter_table('users') as batch:
        batch.drop_column('callback_fallback_target_id')
        batch.drop_column('callback_ai')
    op.drop_index('ix_calls_number_started', table_name='calls')
    with op.batch_alter_table('calls') as batch:
        batch.drop_column('direction')
