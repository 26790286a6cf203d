"""Every SQL statement the /dzone commands run (ingest/actions.py), in one place.

They write the same columns and rules an operator writes with SQL (docs/operations.md), so the existing
triggers announce each change at its commit and every serve replica applies it; each change made from
Discord also writes a ``command_audit`` row in the same transaction.
"""

from __future__ import annotations

# The server as the commands see it (None: the ingest has not written it yet). FOR UPDATE in a change:
# two admins changing settings at once are applied one after the other, each audited against the last.
SERVER = """
SELECT name, alias, enabled, passworded, hide_offline, relay_messages, departed_at IS NULL AS present
FROM discord_servers WHERE server_id = $1
"""
SERVER_FOR_UPDATE = SERVER + " FOR UPDATE"

# A member's own hide rule: set_by 'member', so that show-me never deletes an operator's hide_user row.
HIDE_SELF = """
INSERT INTO discord_visibility (server_id, rule, value, set_by) VALUES ($1, 'hide_user', $2, 'member')
ON CONFLICT DO NOTHING
"""
SHOW_SELF = """
DELETE FROM discord_visibility WHERE server_id = $1 AND rule = 'hide_user' AND value = $2 AND set_by = 'member'
"""
# After the change, in its transaction: is the member still left out (by an operator's rule or a role)?
MEMBER_HIDDEN = "SELECT hidden FROM discord_users WHERE server_id = $1 AND user_id = $2"

# $5: the changes, one audit row each.
AUDIT = """
INSERT INTO command_audit (server_id, user_id, user_name, command, change)
SELECT $1, $2, $3, $4, change FROM unnest($5::text[]) AS change
"""

# Settings are written one column at a time (the names come from SETTING_COLUMNS, never from input).
SETTING_UPDATE = "UPDATE discord_servers SET {column} = $2 WHERE server_id = $1"

# /dzone status: who is shown now (the serve's rule: not hidden, and online unless offline is shown).
MEMBER_COUNTS = """
SELECT count(u.user_id) AS members,
       count(*) FILTER (WHERE NOT u.hidden AND (NOT s.hide_offline OR u.status <> 'offline')) AS shown,
       count(*) FILTER (WHERE u.hidden) AS hidden,
       count(*) FILTER (WHERE u.hidden AND v.user_id IS NOT NULL) AS hid_themselves
FROM discord_servers s
JOIN discord_users u USING (server_id)
LEFT JOIN (SELECT value AS user_id FROM discord_visibility
           WHERE server_id = $1 AND rule = 'hide_user' AND set_by = 'member') v ON v.user_id = u.user_id
WHERE s.server_id = $1
"""
# Each serve reports its viewers per server every few seconds (serve/viewers.py); older rows are gone.
VIEWERS = """
SELECT coalesce(sum(viewers), 0)::int AS viewers, count(*)::int AS replicas
FROM serve_viewers WHERE server_id = $1 AND updated_at > now() - make_interval(secs => $2)
"""
RELAYED_CHANNELS = """
SELECT name FROM discord_channels WHERE server_id = $1 AND coalesce(relay, public) ORDER BY name, channel_id
"""
RECENT_CHANGES = """
SELECT at, user_name, command, change FROM command_audit WHERE server_id = $1 ORDER BY at DESC, audit_id DESC
LIMIT $2
"""
