"""goal: what a campaign is for (each target, or until one succeeds), held tasks, a campaign's caller ID

Revision ID: 0008_goal
Revises: 0007_callbacks
Create Date: 2026-12-02 13:30:00

- campaigns.goal_type: each_target (every target for its own result) or until_one_succeeds (targets in turn,
  the first success cancels the others); existing campaigns are each_target, as they behaved.
- campaigns.parallel_calls: in until_one_succeeds, how many targets are called at once (the rest are held).
- campaigns.goal_met_task_id: the task whose success met the goal (the summary names it).
- campaigns.caller_id: the caller ID of this campaign's calls (NULL: the CALLER_ID setting).
- tasks.held: waiting for its turn; the scheduler never claims a held task.
"""
from alembic import op
import sqlalchemy as sa


revision = '0008_goal'
down_revision = '0007_callbacks'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('campaigns') as batch:
        batch.add_column(sa.Column('goal_type', sa.Enum('each_target', 'until_one_succeeds', name='campaigngoal',
                                                        native_enum=False, length=32),
                                   nullable=False, server_default='each_target'))
        batch.add_column(sa.Column('parallel_calls', sa.Integer(), nullable=False, server_default='1'))
        batch.add_column(sa.Column('goal_met_task_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('caller_id', sa.String(length=80), nullable=True))
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('held', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.drop_column('held')
    with op.batch_alter_table('campaigns') as batch:
        batch.drop_column('caller_id')
        batch.drop_column('goal_met_task_id')
        batch.drop_column('parallel_calls')
        batch.drop_column('goal_type')
