"""cost: usage records (model tokens, trunk seconds) priced when recorded, campaign budgets

Revision ID: 0006_cost
Revises: 0005_webhooks
Create Date: 2026-12-02 13:30:00

- usage_records: one row per Realtime response, transcription, analyzer / summarizer / assistant request and per
  call's trunk time, with its tokens, its cost in micro-dollars and the prices used (history is never re-priced).
- campaigns.budget_microusd / spent_microusd: a campaign's budget and the running sum of its usage records,
  updated in the same transaction as each record; campaigns.pause_reason says OpenDeep paused it (budget spent).
"""
from alembic import op
import sqlalchemy as sa
import db.types


revision = '0006_cost'
down_revision = '0005_webhooks'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('campaigns') as batch:
        batch.add_column(sa.Column('budget_microusd', sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column('spent_microusd', sa.BigInteger(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('pause_reason', sa.Enum('budget_spent', name='pausereason', native_enum=False,
                                                           length=32), nullable=True))
    op.create_table(
        'usage_records',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), primary_key=True),
        sa.Column('user_id', sa.Integer(), sa.ForeignKey('users.id', ondelete='CASCADE'), nullable=False),
        sa.Column('campaign_id', sa.Integer(), sa.ForeignKey('campaigns.id', ondelete='CASCADE'), nullable=True),
        sa.Column('task_id', sa.Integer(), sa.ForeignKey('tasks.id', ondelete='CASCADE'), nullable=True),
        sa.Column('call_id', sa.Integer(), sa.ForeignKey('calls.id', ondelete='CASCADE'), nullable=True),
        sa.Column('chat_id', sa.Integer(), sa.ForeignKey('chat_sessions.id', ondelete='SET NULL'), nullable=True),
        sa.Column('kind', sa.Enum('call_ai', 'transcription', 'analyzer', 'summarizer', 'assistant', 'trunk',
                                  name='usagekind', native_enum=False, length=32), nullable=False),
        sa.Column('model', sa.String(length=100), nullable=False),
        sa.Column('text_in', sa.Integer(), nullable=False),
        sa.Column('text_cached_in', sa.Integer(), nullable=False),
        sa.Column('text_out', sa.Integer(), nullable=False),
        sa.Column('audio_in', sa.Integer(), nullable=False),
        sa.Column('audio_cached_in', sa.Integer(), nullable=False),
        sa.Column('audio_out', sa.Integer(), nullable=False),
        sa.Column('seconds', sa.Integer(), nullable=False),
        sa.Column('cost_microusd', sa.BigInteger(), nullable=True),
        sa.Column('price', sa.JSON(), nullable=True),
        sa.Column('unpriced_reason', sa.String(length=200), nullable=True),
        sa.Column('at', db.types.UTCDateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_usage_records_campaign_id', 'usage_records', ['campaign_id'])
    op.create_index('ix_usage_records_task_id', 'usage_records', ['task_id'])
    op.create_index('ix_usage_records_call_id', 'usage_records', ['call_id'])
    op.create_index('ix_usage_records_user_at', 'usage_records', ['user_id', 'at'])


def downgrade() -> None:
    op.drop_index('ix_usage_records_user_at', table_name='usage_records')
    op.drop_index('ix_usage_records_call_id', table_name='usage_records')
    op.drop_index('ix_usage_records_task_id', table_name='usage_records')
    op.drop_index('ix_usage_records_campaign_id', table_name='usage_records')
    op.drop_table('usage_records')
    with op.batch_alter_table('campaigns') as batch:
        batch.drop_column('pause_reason')
        batch.drop_column('spent_microusd')
        batch.drop_column('budget_microusd')
