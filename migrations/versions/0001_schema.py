"""The d-zone schema: servers, users, the change feed and the inspection view.

The tables keep the columns, types, key and index of d-back's "custom data providers" guide, so its
SQL runs unchanged; this migration adds the constraints, operator settings and NOTIFY triggers the
guide lacks. The feed's channel and payloads are documented in docs/change-feed.md and decoded by
shared/feed.py.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = """
CREATE TABLE discord_servers (
    server_id       VARCHAR(20) PRIMARY KEY,
    name            VARCHAR(100) NOT NULL,
    passworded      BOOLEAN NOT NULL DEFAULT FALSE,
    is_default      BOOLEAN NOT NULL DEFAULT FALSE,
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    created_at      TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    -- Operator settings: set with SQL, never written by the ingest.
    alias           VARCHAR(32) UNIQUE,
    hide_offline    BOOLEAN NOT NULL DEFAULT TRUE,
    relay_messages  BOOLEAN NOT NULL DEFAULT TRUE,
    oauth_client_id VARCHAR(20),
    -- Written by the ingest only.
    departed_at     TIMESTAMPTZ,
    synced_at       TIMESTAMPTZ,
    CONSTRAINT discord_servers_server_id_snowflake CHECK (server_id ~ '^[0-9]{1,20}$'),
    CONSTRAINT discord_servers_name_not_blank CHECK (btrim(name) <> ''),
    CONSTRAINT discord_servers_alias_format
        CHECK (alias ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$' AND alias !~ '^[0-9]+$'),
    CONSTRAINT discord_servers_oauth_client_id_snowflake CHECK (oauth_client_id ~ '^[0-9]{1,20}$')
);
CREATE UNIQUE INDEX discord_servers_one_default ON discord_servers ((TRUE)) WHERE is_default;

CREATE TABLE discord_users (
    user_id     VARCHAR(20),
    server_id   VARCHAR(20) REFERENCES discord_servers(server_id) ON DELETE CASCADE,
    username    VARCHAR(100) NOT NULL,
    status      VARCHAR(10) NOT NULL,
    role_color  VARCHAR(7) NOT NULL,
    last_seen   TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (user_id, server_id),
    CONSTRAINT discord_users_user_id_snowflake CHECK (user_id ~ '^[0-9]{1,20}$'),
    CONSTRAINT discord_users_status_known CHECK (status IN ('online', 'idle', 'dnd', 'offline')),
    CONSTRAINT discord_users_role_color_hex CHECK (role_color ~ '^#[0-9a-f]{6}$')
);
CREATE INDEX idx_users_server_status ON discord_users(server_id, status);

COMMENT ON COLUMN discord_servers.alias IS 'Short id used in ?s= links and the server-list id; not all digits';
COMMENT ON COLUMN discord_servers.hide_offline IS 'Offline members are left out of snapshots and removed live';
COMMENT ON COLUMN discord_servers.relay_messages IS 'Chat messages of this server reach viewers';
COMMENT ON COLUMN discord_servers.oauth_client_id IS 'OAuth client id sent to viewers as clientId';
COMMENT ON COLUMN discord_servers.departed_at IS 'Set by the ingest when the bot left the guild';
COMMENT ON COLUMN discord_servers.synced_at IS 'Last full sync of the members by the ingest';
COMMENT ON COLUMN discord_users.last_seen IS 'When this row last changed (insert or a real update)';
"""

# One channel carries the whole feed so that LISTEN is one statement and commit order is kept.
# `seq` makes every payload unique: PostgreSQL merges identical payloads within a transaction,
# which would drop an A->B->A->B flip.
FEED = """
CREATE SEQUENCE dzone_feed_seq;

CREATE FUNCTION dzone_feed_bulk() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('dzone.bulk', true), '') = 'on'
$$;

CREATE FUNCTION dzone_users_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.last_seen := LOCALTIMESTAMP;
    RETURN NEW;
END
$$;

CREATE TRIGGER discord_users_touch BEFORE UPDATE ON discord_users FOR EACH ROW
    WHEN ((OLD.username, OLD.status, OLD.role_color) IS DISTINCT FROM (NEW.username, NEW.status, NEW.role_color))
    EXECUTE FUNCTION dzone_users_touch();

CREATE FUNCTION dzone_users_feed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF dzone_feed_bulk() THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE'
            AND (OLD.server_id, OLD.user_id) IS DISTINCT FROM (NEW.server_id, NEW.user_id)) THEN
        PERFORM pg_notify('dzone_feed', json_build_object(
            'kind', 'user', 'op', 'delete', 'seq', nextval('dzone_feed_seq'),
            'server_id', OLD.server_id, 'user_id', OLD.user_id)::text);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('dzone_feed', json_build_object(
            'kind', 'user', 'op', 'upsert', 'seq', nextval('dzone_feed_seq'),
            'server_id', NEW.server_id, 'user_id', NEW.user_id, 'username', NEW.username,
            'status', NEW.status, 'role_color', NEW.role_color)::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER discord_users_feed_insert_delete AFTER INSERT OR DELETE ON discord_users
    FOR EACH ROW EXECUTE FUNCTION dzone_users_feed();
CREATE TRIGGER discord_users_feed_update AFTER UPDATE ON discord_users
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION dzone_users_feed();

CREATE FUNCTION dzone_servers_feed() RETURNS trigger LANGUAGE plpgsql AS $$
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
$$;

CREATE TRIGGER discord_servers_feed_insert_delete AFTER INSERT OR DELETE ON discord_servers
    FOR EACH ROW EXECUTE FUNCTION dzone_servers_feed();
CREATE TRIGGER discord_servers_feed_update AFTER UPDATE ON discord_servers
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION dzone_servers_feed();

-- After a bulk change (SET LOCAL dzone.bulk = 'on'), one notification tells readers to re-read a server.
CREATE FUNCTION dzone_notify_resync(p_server_id text) RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify('dzone_feed', json_build_object(
        'kind', 'resync', 'seq', nextval('dzone_feed_seq'), 'server_id', p_server_id)::text)
$$;

-- Chat is not stored, only announced. The text is capped at 1,000 characters and its line breaks
-- become spaces, which keeps the payload under PostgreSQL's 8,000-byte limit (JSON escapes <= 6 bytes
-- a character) and matches what a d-zone bubble can show.
CREATE FUNCTION dzone_notify_message(p_server_id text, p_user_id text, p_channel_id text,
                                     p_message_id text, p_text text) RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify('dzone_feed', json_build_object(
        'kind', 'message', 'seq', nextval('dzone_feed_seq'), 'server_id', p_server_id,
        'user_id', p_user_id, 'channel_id', p_channel_id, 'message_id', p_message_id,
        'text', left(regexp_replace(p_text, '[\\r\\n]+', ' ', 'g'), 1000))::text)
$$;
"""

VIEWS = """
CREATE VIEW server_presence_summary AS
SELECT s.server_id,
       s.name,
       s.alias,
       s.enabled,
       s.is_default,
       s.departed_at IS NULL AS bot_present,
       count(u.user_id) AS members,
       count(*) FILTER (WHERE u.status = 'online') AS online,
       count(*) FILTER (WHERE u.status = 'idle') AS idle,
       count(*) FILTER (WHERE u.status = 'dnd') AS dnd,
       count(*) FILTER (WHERE u.status = 'offline') AS offline,
       max(u.last_seen) AS last_change
FROM discord_servers s
LEFT JOIN discord_users u USING (server_id)
GROUP BY s.server_id;
"""


def _statements(script: str) -> list[str]:
    """Split a script on top-level semicolons (not inside $$ bodies): drivers run one statement a call."""
    statements, current, in_body = [], [], False
    for line in script.splitlines():
        current.append(line)
        in_body ^= line.count("$$") % 2 == 1
        if not in_body and line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";"))
            current = []
    rest = "\n".join(current).strip()
    return [*statements, rest] if rest else statements


def upgrade() -> None:
    for statement in _statements(TABLES + FEED + VIEWS):
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS server_presence_summary")
    op.execute("DROP TABLE IF EXISTS discord_users")
    op.execute("DROP TABLE IF EXISTS discord_servers")
    for function in (
        "dzone_notify_message(text, text, text, text, text)",
        "dzone_notify_resync(text)",
        "dzone_servers_feed()",
        "dzone_users_feed()",
        "dzone_users_touch()",
        "dzone_feed_bulk()",
    ):
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    op.execute("DROP SEQUENCE IF EXISTS dzone_feed_seq")
