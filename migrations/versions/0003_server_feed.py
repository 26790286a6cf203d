"""The ``server`` feed payload carries the row: what decides access, and what the server-list shows.

Listeners then decide who may keep viewing a server from the notification itself, in commit order,
instead of re-reading the table later (a re-read lands after events committed right behind the change).
docs/change-feed.md documents the payload; shared/feed.py decodes it.

Revision ID: 0003
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Name <= 100 characters (<= 600 bytes escaped) keeps the payload far below NOTIFY's 8,000 bytes.
# created_at goes as epoch seconds so listeners can keep the server-list in the table's order.
UPGRADE = """
CREATE OR REPLACE FUNCTION dzone_servers_feed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.server_id <> NEW.server_id) THEN
        PERFORM pg_notify('dzone_feed', json_build_object(
            'kind', 'server', 'op', 'delete', 'seq', nextval('dzone_feed_seq'),
            'server_id', OLD.server_id)::text);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('dzone_feed', json_build_object(
            'kind', 'server', 'op', 'upsert', 'seq', nextval('dzone_feed_seq'),
            'server_id', NEW.server_id, 'name', NEW.name, 'alias', NEW.alias,
            'passworded', NEW.passworded, 'is_default', NEW.is_default, 'enabled', NEW.enabled,
            'departed', NEW.departed_at IS NOT NULL, 'hide_offline', NEW.hide_offline,
            'relay_messages', NEW.relay_messages, 'oauth_client_id', NEW.oauth_client_id,
            'created_at', extract(epoch FROM NEW.created_at))::text);
    END IF;
    RETURN NULL;
END
$$
"""

# 0001's definition, restored on downgrade.
DOWNGRADE = """
CREATE OR REPLACE FUNCTION dzone_servers_feed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.server_id <> NEW.server_id) THEN
        PERFORM pg_notify('dzone_feed', json_build_object(
            'kind', 'server', 'op', 'delete', 'seq', nextval('dzone_feed_seq'),
            'server_id', OLD.server_id)::text);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('dzone_feed', json_build_object(
            'kind', 'server', 'op', 'upsert', 'seq', nextval('dzone_feed_seq'),
            'server_id', NEW.server_id)::text);
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
