"""Every SQL statement the ingest runs, in one place.

Live writes are one statement per batch (deletes in a CTE, upserts from ``unnest`` arrays) so a batch is
one round trip and one implicit transaction. Upserts skip rows whose stored values are unchanged, so
no-ops write nothing and the triggers announce nothing. Rows of servers that have no discord_servers
row (an operator deleted it) are skipped instead of failing the whole batch on the foreign key.
"""

from __future__ import annotations

from shared.feed import BULK_MODE, NOTIFY_MESSAGE, NOTIFY_RESYNC

__all__ = [
    "BULK_MODE",
    "CHANNELS_CLOSE",
    "COUNT_SERVER_USERS",
    "NOTIFY_MESSAGE",
    "NOTIFY_RESYNC",
    "RELAY_MESSAGES",
    "SERVERS_PRESENT",
    "SERVER_DEPART",
    "SERVER_RENAME",
    "SERVER_UPSERT_SYNCED",
    "SYNC_CHANGED_TABLE",
    "SYNC_COUNT_DEPARTED",
    "SYNC_CREATE_CHANGED",
    "SYNC_CREATE_TEMP",
    "SYNC_DELETE_DEPARTED",
    "SYNC_HAS_ROWS",
    "SYNC_LOCK_SERVER",
    "SYNC_TEMP_TABLE",
    "SYNC_UPSERT",
    "USERS_DELETE_SERVER",
    "USERS_TABLE",
    "WRITE_CHANNELS",
    "WRITE_MEMBERS",
]

# $1: upserted rows, $2: deleted (server_id, user_id) pairs, each a JSON array of arrays in MemberRow
# order (ingest.store.rows_json): one text parameter is far cheaper to encode than five text arrays.
WRITE_MEMBERS = """
WITH gone AS (
    DELETE FROM discord_users u
    USING jsonb_array_elements($2::jsonb) AS d(pair)
    WHERE u.server_id = d.pair->>0 AND u.user_id = d.pair->>1
), r AS (
    SELECT e->>0 AS server_id, e->>1 AS user_id, e->>2 AS username, e->>3 AS status, e->>4 AS role_color
    FROM jsonb_array_elements($1::jsonb) AS e
)
INSERT INTO discord_users AS u (server_id, user_id, username, status, role_color)
SELECT r.server_id, r.user_id, r.username, r.status, r.role_color
FROM r
WHERE EXISTS (SELECT 1 FROM discord_servers s WHERE s.server_id = r.server_id)
ON CONFLICT (user_id, server_id) DO UPDATE
    SET username = EXCLUDED.username, status = EXCLUDED.status, role_color = EXCLUDED.role_color
    WHERE (u.username, u.status, u.role_color)
          IS DISTINCT FROM (EXCLUDED.username, EXCLUDED.status, EXCLUDED.role_color)
"""

# The channels of some guilds ($5) become exactly the rows given ($1..$4): vanished ones are deleted, the
# others upserted. `relay` is the operator's column: never written here, kept across updates.
WRITE_CHANNELS = """
WITH incoming AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[]) AS r(server_id, channel_id, name, public)
), gone AS (
    DELETE FROM discord_channels c
    WHERE c.server_id = ANY($5::text[])
      AND NOT EXISTS (SELECT 1 FROM incoming r WHERE r.server_id = c.server_id AND r.channel_id = c.channel_id)
)
INSERT INTO discord_channels AS c (server_id, channel_id, name, public)
SELECT r.server_id, r.channel_id, r.name, r.public FROM incoming r
WHERE EXISTS (SELECT 1 FROM discord_servers s WHERE s.server_id = r.server_id)
ON CONFLICT (server_id, channel_id) DO UPDATE
    SET name = EXCLUDED.name, public = EXCLUDED.public
    WHERE (c.name, c.public) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.public)
"""

# When the channel rows of some guilds could not be written: relay nothing the operator did not choose.
CHANNELS_CLOSE = "UPDATE discord_channels SET public = FALSE WHERE server_id = ANY($1::text[]) AND public"

# Chat is announced, never stored: only for servers whose operator left relay on, and only from channels
# whose row says so (the operator's `relay`, else the ingest's `public`); a channel without a row is not
# relayed. Checked here, at the flush, so an operator's change counts from its commit. ORDER BY keeps the
# batch's order: PostgreSQL evaluates volatile target-list functions after the sort.
RELAY_MESSAGES = """
SELECT dzone_notify_message(m.server_id, m.user_id, m.channel_id, m.message_id, m.text)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY
     AS m(server_id, user_id, channel_id, message_id, text, ord)
JOIN discord_servers s ON s.server_id = m.server_id AND s.relay_messages
JOIN discord_channels c ON c.server_id = m.server_id AND c.channel_id = m.channel_id
     AND coalesce(c.relay, c.public)
ORDER BY m.ord
"""

# --- full sync of one guild (one transaction) -------------------------------------------------
SERVER_UPSERT_SYNCED = """
INSERT INTO discord_servers AS s (server_id, name, synced_at) VALUES ($1, $2, now())
ON CONFLICT (server_id) DO UPDATE SET name = EXCLUDED.name, departed_at = NULL, synced_at = EXCLUDED.synced_at
"""

# Held to the commit: other transactions cannot add rows of the server meanwhile (their foreign key
# check needs KEY SHARE on its row), so an empty guild seen by SYNC_HAS_ROWS stays empty until the COPY.
SYNC_LOCK_SERVER = "SELECT 1 FROM discord_servers WHERE server_id = $1 FOR UPDATE"
SYNC_HAS_ROWS = "SELECT EXISTS (SELECT 1 FROM discord_users WHERE server_id = $1)"
USERS_TABLE = "discord_users"  # a first sync COPYs into it directly (ingest.store.full_sync)

SYNC_TEMP_TABLE = "dzone_sync_members"
SYNC_CREATE_TEMP = f"""
CREATE TEMP TABLE {SYNC_TEMP_TABLE} (
    user_id text PRIMARY KEY, username text NOT NULL, status text NOT NULL, role_color text NOT NULL
) ON COMMIT DROP
"""

# The snapshot's rows that differ from the stored ones (new or changed): only these go through the
# upsert, so a re-sync that changes 2 % of a guild touches 2 % of its rows. Its status gives the count.
SYNC_CHANGED_TABLE = "dzone_sync_changed"
SYNC_CREATE_CHANGED = f"""
CREATE TEMP TABLE {SYNC_CHANGED_TABLE} ON COMMIT DROP AS
SELECT t.* FROM {SYNC_TEMP_TABLE} t
LEFT JOIN discord_users u ON u.server_id = $1 AND u.user_id = t.user_id
WHERE u.user_id IS NULL
   OR (u.username, u.status, u.role_color) IS DISTINCT FROM (t.username, t.status, t.role_color)
"""

# Stored rows of members the snapshot no longer has (deleted by SYNC_DELETE_DEPARTED when any).
SYNC_COUNT_DEPARTED = f"""
SELECT count(*) FROM discord_users u
WHERE u.server_id = $1 AND NOT EXISTS (SELECT 1 FROM {SYNC_TEMP_TABLE} t WHERE t.user_id = u.user_id)
"""

SYNC_UPSERT = f"""
INSERT INTO discord_users AS u (server_id, user_id, username, status, role_color)
SELECT $1, t.user_id, t.username, t.status, t.role_color FROM {SYNC_CHANGED_TABLE} t
ON CONFLICT (user_id, server_id) DO UPDATE
    SET username = EXCLUDED.username, status = EXCLUDED.status, role_color = EXCLUDED.role_color
    WHERE (u.username, u.status, u.role_color)
          IS DISTINCT FROM (EXCLUDED.username, EXCLUDED.status, EXCLUDED.role_color)
"""

SYNC_DELETE_DEPARTED = f"""
DELETE FROM discord_users u
WHERE u.server_id = $1 AND NOT EXISTS (SELECT 1 FROM {SYNC_TEMP_TABLE} t WHERE t.user_id = u.user_id)
"""

# --- guild-level changes ------------------------------------------------------------------------
SERVER_RENAME = """
UPDATE discord_servers SET name = $2 WHERE server_id = $1 AND name IS DISTINCT FROM $2
"""

# The bot left the guild: keep the operator's row (settings), mark it, forget its members.
SERVER_DEPART = """
UPDATE discord_servers SET departed_at = now() WHERE server_id = $1 AND departed_at IS NULL
"""
USERS_DELETE_SERVER = "DELETE FROM discord_users WHERE server_id = $1"

# Servers the database believes the bot is in (the worker keeps those of its own shards).
SERVERS_PRESENT = "SELECT server_id FROM discord_servers WHERE departed_at IS NULL"
COUNT_SERVER_USERS = "SELECT count(*) FROM discord_users WHERE server_id = $1"

# The writer's idle check: the server answers and takes writes (a standby after a failover does not).
PROBE_READ_ONLY = "SELECT pg_is_in_recovery()"

# One row per shard of this process, refreshed every few seconds; rows silent for a day are removed.
HEARTBEAT = """
WITH expired AS (
    DELETE FROM ingest_heartbeat WHERE updated_at < now() - interval '1 day'
)
INSERT INTO ingest_heartbeat AS h
    (instance, shard_id, shard_count, state, latency_ms, pending_rows, started_at, updated_at)
SELECT $1, s.shard_id, $2, s.state, s.latency_ms, $3, $4, now()
FROM unnest($5::int[], $6::text[], $7::real[]) AS s(shard_id, state, latency_ms)
ON CONFLICT (instance, shard_id) DO UPDATE
    SET shard_count = EXCLUDED.shard_count, state = EXCLUDED.state, latency_ms = EXCLUDED.latency_ms,
        pending_rows = EXCLUDED.pending_rows, started_at = EXCLUDED.started_at, updated_at = now()
"""
