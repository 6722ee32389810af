"""security: session versions, transfer targets per user, single-use AudioSocket UUIDs, allowed transfers

Revision ID: 0003_security
Revises: 0002_aftercall
Create Date: 2026-11-28 07:30:00

- users.session_version: a session cookie carries the version it was issued with; logout and a password
  change bump it, so every earlier cookie of that user stops working.
- transfer_targets: the people and numbers a user allows the call AI to transfer to (by name); the model can
  never make a number up.
- calls.audiosocket_claimed_at: the first AudioSocket connection with a call's UUID claims it atomically;
  any later connection with that UUID is refused.
- calls.transfer_number: the one number OpenDeep allowed this call to be transferred to; the dialplan's
  transfer context asks for it and dials nothing else.
"""
from alembic import op
import sqlalchemy as sa
import db.types


revision = '0003_security'
down_revision = '0002_aftercall'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('session_version', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('calls') as batch:
        batch.add_column(sa.Column('audiosocket_claimed_at', db.types.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('transfer_number', sa.String(length=20), nullable=True))
    op.create_table(
        'transfer_targets',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('user_id', sa.Integer(), sa.ForeignKey('users.id', ondelete='CASCADE'), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('phone_number', sa.String(length=20), nullable=False),
        sa.Column('created_at', db.types.UTCDateTime(timezone=True), nullable=False),
        sa.UniqueConstraint('user_id', 'name', name='uq_transfer_targets_user_name'),
    )
    op.create_index('ix_transfer_targets_user_id', 'transfer_targets', ['user_id'])


def downgrade() -> None:
    op.drop_index('ix_transfer_targets_user_id', table_name='transfer_targets')
    op.drop_table('transfer_targets')
    with op.batch_alter_table('calls') as batch:
        batch.drop_column('transfer_number')
        batch.drop_column('audiosocket_claimed_at')
    with op.batch_alter_table('users') as batch:
        batch.drop_column('session_version')
