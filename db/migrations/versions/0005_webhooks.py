"""webhooks: endpoints per user and the delivery outbox

Revision ID: 0005_webhooks
Revises: 0004_scaleout
Create Date: 2026-12-02 13:20:00

- webhook_endpoints: a user's URLs, the secret that signs each delivery, and the event types each wants.
- webhook_deliveries: the outbox. A row is written in the transaction of the change it reports (a call ended,
  a task finished, ...), then sent and retried by the webhook sender, which claims due rows with a lease.
"""
from alembic import op
import sqlalchemy as sa
import db.types


revision = '0005_webhooks'
down_revision = '0004_scaleout'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'webhook_endpoints',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('user_id', sa.Integer(), sa.ForeignKey('users.id', ondelete='CASCADE'), nullable=False),
        sa.Column('url', sa.String(length=2000), nullable=False),
        sa.Column('secret', sa.String(length=200), nullable=False),
        sa.Column('events', sa.JSON(), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('created_at', db.types.UTCDateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_webhook_endpoints_user_id', 'webhook_endpoints', ['user_id'])
    op.create_table(
        'webhook_deliveries',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), primary_key=True),
        sa.Column('user_id', sa.Integer(), sa.ForeignKey('users.id', ondelete='CASCADE'), nullable=False),
        sa.Column('endpoint_id', sa.Integer(), sa.ForeignKey('webhook_endpoints.id', ondelete='CASCADE'),
                  nullable=False),
        sa.Column('event_id', sa.String(length=36), nullable=False, unique=True),
        sa.Column('event_type', sa.String(length=64), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('status', sa.Enum('pending', 'delivered', 'gave_up', name='webhookdeliverystatus',
                                    native_enum=False, length=32), nullable=False),
        sa.Column('created_at', db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('next_attempt_at', db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('claim', sa.String(length=36), nullable=True),
        sa.Column('locked_until', db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('last_status_code', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('delivered_at', db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('history', sa.JSON(), nullable=False),
    )
    op.create_index('ix_webhook_deliveries_user_id', 'webhook_deliveries', ['user_id'])
    op.create_index('ix_webhook_deliveries_endpoint_id', 'webhook_deliveries', ['endpoint_id'])
    op.create_index('ix_webhook_deliveries_due', 'webhook_deliveries', ['status', 'next_attempt_at'])


def downgrade() -> None:
    op.drop_index('ix_webhook_deliveries_due', table_name='webhook_deliveries')
    op.drop_index('ix_webhook_deliveries_endpoint_id', table_name='webhook_deliveries')
    op.drop_index('ix_webhook_deliveries_user_id', table_name='webhook_deliveries')
    op.drop_table('webhook_deliveries')
    op.drop_index('ix_webhook_endpoints_user_id', table_name='webhook_endpoints')
    op.drop_table('webhook_endpoints')
