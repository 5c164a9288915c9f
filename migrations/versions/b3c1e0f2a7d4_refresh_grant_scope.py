"""refresh grant scope apart from the access token's

A refresh request may narrow the access token's scope (RFC 6749 §6), while the refresh token it gets back keeps the
scope of the grant. ``refresh_scope`` holds the latter when the two differ; NULL means "the same as ``scope``", so
rows written before this column keep their meaning. Apply it before the release that reads it. While nodes of the
previous release still run, one of them that rotates a narrowed token gives the successor the narrowed scope:
the grant can only shrink, never widen.

Adding a nullable column without a default is a catalogue change, but it needs a brief exclusive lock on
``tokens``: ``lock_timeout`` makes the migration fail fast, to be retried, rather than queue behind a long
transaction and hold up every token request behind it.

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
    if op.get_bind().dialect.name == "postgresql":
        op.execute("SET LOCAL lock_timeout = '5s'")
    with op.batch_alter_table('tokens') as batch_op:
        batch_op.add_column(sa.Column('refresh_scope', sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table('tokens') as batch_op:
        batch_op.drop_column('refresh_scope')
