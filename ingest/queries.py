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
    "RECOMPUTE_HIDDEN",
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
    "SYNC_INSERT",
    "SYNC_LOCK_SERVER",
    "SYNC_TEMP_TABLE",
    "SYNC_UPDATE",
    "USERS_DELETE_SERVER",
    "USERS_TABLE",
    "WRITE_CHANNELS",
    "WRITE_MEMBERS",
    "WRITE_ROLES",
]

# $1: upserted rows, $2: deleted (server_id, user_id) pairs, each a JSON array of arrays in MemberRow
# order (ingest.store.rows_json; role ids comma-separated): one text parameter is far cheaper to encode
# than six text arrays. Stored rows are UPDATEd and only new ones INSERTed: an upsert would run the
# rows' BEFORE INSERT triggers (the visibility rules) on every presence change. Every part sees the
# statement's snapshot, so a row is either updated or inserted, never both; ON CONFLICT covers a row
# another writer inserted meanwhile.
WRITE_MEMBERS = """
WITH incoming AS (
    SELECT e->>0 AS server_id, e->>1 AS user_id, e->>2 AS username, e->>3 AS status, e->>4 AS role_color,
           string_to_array(e->>5, ',') AS role_ids
    FROM jsonb_array_elements($1::jsonb) AS e
), gone AS (
    DELETE FROM discord_users u
    USING jsonb_array_elements($2::jsonb) AS d(pair)
    WHERE u.server_id = d.pair->>0 AND u.user_id = d.pair->>1
), changed AS (
    UPDATE discord_users u
    SET username = r.username, status = r.status, role_color = r.role_color, role_ids = r.role_ids
    FROM incoming r
    WHERE u.server_id = r.server_id AND u.user_id = r.user_id
      AND (u.username, u.status, u.role_color, u.role_ids)
          IS DISTINCT FROM (r.username, r.status, r.role_color, r.role_ids)
)
INSERT INTO discord_users AS u (server_id, user_id, username, status, role_color, role_ids)
SELECT r.server_id, r.user_id, r.username, r.status, r.role_color, r.role_ids
FROM incoming r
WHERE EXISTS (SELECT 1 FROM discord_servers s WHERE s.server_id = r.server_id)
  AND NOT EXISTS (SELECT 1 FROM discord_users e WHERE e.server_id = r.server_id AND e.user_id = r.user_id)
ON CONFLICT (user_id, server_id) DO UPDATE
    SET username = EXCLUDED.username, status = EXCLUDED.status, role_color = EXCLUDED.role_color,
        role_ids = EXCLUDED.role_ids
    WHERE (u.username, u.status, u.role_color, u.role_ids)
          IS DISTINCT FROM (EXCLUDED.username, EXCLUDED.status, EXCLUDED.role_color, EXCLUDED.role_ids)
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
# relayed; nor is a member's whom the visibility rules hide. Checked here, at the flush, so an operator's change counts from its commit. ORDER BY keeps the
# batch's order: PostgreSQL evaluates volatile target-list functions after the sort.
RELAY_MESSAGES = """
SELECT dzone_notify_message(m.server_id, m.user_id, m.channel_id, m.message_id, m.text)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY
     AS m(server_id, user_id, channel_id, message_id, text, ord)
JOIN discord_servers s ON s.server_id = m.server_id AND s.relay_messages
JOIN discord_channels c ON c.server_id = m.server_id AND c.channel_id = m.channel_id
     AND coalesce(c.relay, c.public)
WHERE NOT EXISTS (
    SELECT 1 FROM discord_users u WHERE u.server_id = m.server_id AND u.user_id = m.user_id AND u.hidden
)
ORDER BY m.ord
"""

# --- full sync of one guild (one transaction) -------------------------------------------------
SERVER_UPSERT_SYNCED = """
INSERT INTO discord_servers AS s (server_id, name, synced_at) VALUES ($1, $2, now())
ON CONFLICT (server_id) DO UPDATE SET name = EXCLUDED.name, departed_at = NULL, synced_at = EXCLUDED.synced_at
"""

# One guild's roles ($2 ids, $3 names) become exactly these rows, so visibility rules can name a role;
# only rows that change are written (discord_roles' triggers re-apply name rules on a change).
WRITE_ROLES = """
WITH incoming AS (
    SELECT * FROM unnest($2::text[], $3::text[]) AS r(role_id, name)
), gone AS (
    DELETE FROM discord_roles d
    WHERE d.server_id = $1::text AND NOT EXISTS (SELECT 1 FROM incoming r WHERE r.role_id = d.role_id)
)
INSERT INTO discord_roles AS d (server_id, role_id, name)
SELECT $1::text, r.role_id, r.name FROM incoming r
WHERE EXISTS (SELECT 1 FROM discord_servers s WHERE s.server_id = $1::text)
ON CONFLICT (server_id, role_id) DO UPDATE SET name = EXCLUDED.name
    WHERE d.name IS DISTINCT FROM EXCLUDED.name
"""

# Held to the commit: other transactions cannot add rows of the server meanwhile (their foreign key
# check needs KEY SHARE on its row), so an empty guild seen by SYNC_HAS_ROWS stays empty until the COPY.
SYNC_LOCK_SERVER = "SELECT 1 FROM discord_servers WHERE server_id = $1 FOR UPDATE"
SYNC_HAS_ROWS = "SELECT EXISTS (SELECT 1 FROM discord_users WHERE server_id = $1)"
USERS_TABLE = "discord_users"  # a first sync COPYs into it directly (ingest.store.full_sync)

# Bulk mode skips the per-row visibility check (migration 0005): the sync judges the server at once.
RECOMPUTE_HIDDEN = "SELECT dzone_recompute_hidden($1)"

SYNC_TEMP_TABLE = "dzone_sync_members"
SYNC_CREATE_TEMP = f"""
CREATE TEMP TABLE {SYNC_TEMP_TABLE} (
    user_id text PRIMARY KEY, username text NOT NULL, status text NOT NULL, role_color text NOT NULL,
    role_ids text NOT NULL
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
   OR (u.username, u.status, u.role_color, u.role_ids)
      IS DISTINCT FROM (t.username, t.status, t.role_color, string_to_array(t.role_ids, ','))
"""

# Stored rows of members the snapshot no longer has (deleted by SYNC_DELETE_DEPARTED when any).
SYNC_COUNT_DEPARTED = f"""
SELECT count(*) FROM discord_users u
WHERE u.server_id = $1 AND NOT EXISTS (SELECT 1 FROM {SYNC_TEMP_TABLE} t WHERE t.user_id = u.user_id)
"""

# Changed rows are updated and new ones inserted (as in WRITE_MEMBERS: no per-row insert triggers for
# rows that exist). The sync holds the guild: nobody else writes its rows meanwhile.
SYNC_UPDATE = f"""
UPDATE discord_users u
SET username = t.username, status = t.status, role_color = t.role_color,
    role_ids = string_to_array(t.role_ids, ',')
FROM {SYNC_CHANGED_TABLE} t
WHERE u.server_id = $1::text AND u.user_id = t.user_id
"""

SYNC_INSERT = f"""
INSERT INTO discord_users AS u (server_id, user_id, username, status, role_color, role_ids)
SELECT $1::text, t.user_id, t.username, t.status, t.role_color, string_to_array(t.role_ids, ',')
FROM {SYNC_CHANGED_TABLE} t
WHERE NOT EXISTS (SELECT 1 FROM discord_users e WHERE e.server_id = $1 AND e.user_id = t.user_id)
ON CONFLICT (user_id, server_id) DO UPDATE
    SET username = EXCLUDED.username, status = EXCLUDED.status, role_color = EXCLUDED.role_color,
        role_ids = EXCLUDED.role_ids
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
