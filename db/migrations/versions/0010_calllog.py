"""call log: indexes for the call log, the live board and transcript search

Revision ID: 0010_calllog
Revises: 0009_user_prefs
Create Date: 2026-12-02 13:30:00

- ix_calls_user_created (calls.user_id, created_at, id): the call log's newest-first pages (keyset on
  created_at, id) and its date filter read one user's calls in index order.
- ix_calls_user_status (calls.user_id, status): the live board reads the user's calls not yet ended.
- ix_call_transcripts_text_trgm (PostgreSQL only): a pg_trgm GIN index, so "text in the transcript" (ILIKE
  '%words%') is an index scan instead of a read of every line. pg_trgm is a trusted extension (PostgreSQL 13+):
  the database's owner may create it. SQLite has no such index; there the search reads the lines of the calls
  the other filters left (see README, "Call log").
"""
from alembic import op


revision = '0010_calllog'
down_revision = '0009_user_prefs'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_calls_user_created', 'calls', ['user_id', 'created_at', 'id'])
    op.create_index('ix_calls_user_status', 'calls', ['user_id', 'status'])
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('CREATE EXTENSION IF NOT EXISTS pg_trgm')
        op.create_index('ix_call_transcripts_text_trgm', 'call_transcripts', ['text'], postgresql_using='gin',
                        postgresql_ops={'text': 'gin_trgm_ops'})


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.drop_index('ix_call_transcripts_text_trgm', table_name='call_transcripts')
    op.drop_index('ix_calls_user_status', table_name='calls')
    op.drop_index('ix_calls_user_created', table_name='calls')
