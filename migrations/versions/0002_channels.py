"""Channels and the chat relay rule: which channels the public could read, and the operator's override.

The ingest keeps one row per channel of every guild it sees (``public`` from Discord's permissions, see
ingest/channels.py); operators set ``relay`` to override. RELAY_MESSAGES (ingest/queries.py) announces
a message only when its channel's row says ``coalesce(relay, public)``, so an override takes effect at
its commit and a message from a channel without a row is never announced.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATEMENTS = (
    """
CREATE TABLE discord_channels (
    server_id   VARCHAR(20) NOT NULL REFERENCES discord_servers(server_id) ON DELETE CASCADE,
    channel_id  VARCHAR(20) NOT NULL,
    name        VARCHAR(100) NOT NULL,
    public      BOOLEAN NOT NULL,
    relay       BOOLEAN,
    PRIMARY KEY (server_id, channel_id),
    CONSTRAINT discord_channels_channel_id_snowflake CHECK (channel_id ~ '^[0-9]{1,20}$')
)
""",
    "COMMENT ON TABLE discord_channels IS "
    "'Channels of each guild (threads excluded: they follow their parent); chat is relayed from a channel "
    "when coalesce(relay, public)'",
    "COMMENT ON COLUMN discord_channels.name IS 'Channel name on Discord (written by the ingest)'",
    "COMMENT ON COLUMN discord_channels.public IS "
    "'Written by the ingest: @everyone can view the channel (base permissions and overwrites) and it is "
    "not NSFW'",
    "COMMENT ON COLUMN discord_channels.relay IS "
    "'Operator setting, never written by the ingest: NULL follows public, TRUE/FALSE relays or not'",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS discord_channels")
