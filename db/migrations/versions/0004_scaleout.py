"""scale-out: which Asterisk server carries each call

Revision ID: 0004_scaleout
Revises: 0003_security
Create Date: 2026-12-02 13:30:00

- calls.asterisk_server: the name of the Asterisk server (ASTERISK_SERVERS, or `default`) whose AMI originated
  the call. Its live-call actions (DTMF, transfer, hangup) go to that server's AMI, its AudioSocket address is
  that server's, and each server's call limit counts its own calls. NULL (calls made before) means the first
  server. Indexed with status: the scheduler counts live calls per server on every pass.
"""
from alembic import op
import sqlalchemy as sa


revision = '0004_scaleout'
down_revision = '0003_security'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('calls') as batch:
        batch.add_column(sa.Column('asterisk_server', sa.String(length=32), nullable=True))
    op.create_index('ix_calls_server_status', 'calls', ['asterisk_server', 'status'])


def downgrade() -> None:
    op.drop_index('ix_calls_server_status', table_name='calls')
    with op.batch_alter_table('calls') as batch:
        batch.drop_column('asterisk_server')
