"""refresh grant scope apart from the access token's

A refresh request may narrow the access token's scope (RFC 6749 §6), while the refresh token it gets back keeps the
scope of the grant. ``refresh_scope`` holds the latter when the two differ; NULL means "the same as ``scope``", so
rows written before this column, and by nodes still running the previous release during a rolling deploy, keep
their meaning.

Revision ID: b3c1e0f2a7d4
Revises: 80f4d13f9272
Create Date: 2026-11-29 16:50:00.000000

"""
from alembic import op
import sqlalchemy as sa


revision = 'b3c1e0f2a7d4'
down_revision = '80f4d13f9272'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('tokens') as batch_op:
        batch_op.add_column(sa.Column('refresh_scope', sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table('tokens') as batch_op:
        batch_op.drop_column('refresh_scope')
