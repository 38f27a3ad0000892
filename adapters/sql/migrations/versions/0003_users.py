"""Users and their tokens; webhooks get an owner.

Existing webhooks keep working as before: their owner is NULL (the admin's)
and ``all_owners`` is true, so they still receive every owner's events.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flowyard.adapters.sql.schema import Name, UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("password_hash", sa.String(300), nullable=False),
        sa.Column("nats_password_hash", sa.String(100), nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("last_login_at", UtcDateTime, nullable=True),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("user_name", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("nats_password_hash", sa.String(100), nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=True),
        sa.Column("last_used_at", UtcDateTime, nullable=True),
        sa.Column("revoked_at", UtcDateTime, nullable=True),
        sa.UniqueConstraint("digest", name="uq_tokens_digest"),
    )
    op.create_index("ix_tokens_user_name", "tokens", ["user_name"])
    op.add_column("webhooks", sa.Column("owner", Name, nullable=True))
    op.add_column(
        "webhooks",
        sa.Column("all_owners", sa.Boolean, nullable=False, server_default=sa.true()),
    )


def downgrade() -> None:
    # batch: SQLite before 3.35 cannot drop a column, alembic then copies the table
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_column("all_owners")
        batch.drop_column("owner")
    op.drop_index("ix_tokens_user_name", table_name="tokens")
    op.drop_table("tokens")
    op.drop_table("users")
