"""Ingest heartbeats: each ingest process writes one row per shard it runs, so ``dzone status`` can
show from SQL alone which shards run where, in which state, and when they were last heard of.

Revision ID: 0004
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE ingest_heartbeat (
            instance     TEXT NOT NULL,           -- host:pid of the ingest process
            shard_id     INTEGER NOT NULL,
            shard_count  INTEGER,
            state        TEXT NOT NULL,           -- connecting, connected, ready, disconnected
            latency_ms   REAL,                    -- gateway heartbeat round trip
            pending_rows INTEGER NOT NULL,
            started_at   TIMESTAMPTZ NOT NULL,
            updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (instance, shard_id)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS ingest_heartbeat")
