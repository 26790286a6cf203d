"""Every SQL statement the serve runs to read, in one place (its one write, the viewer report, is serve/viewers.py)."""

from __future__ import annotations

# The servers a viewer may join, in the stable order of the server-list. "First enabled server" (the
# default when none is marked) is the first row of this order; serve/world.py database_order is the
# same order for rows that arrive on the change feed (created_at as epoch seconds, as the feed sends it).
SERVERS = """
SELECT server_id, name, alias, passworded, is_default, hide_offline, relay_messages, oauth_client_id,
       extract(epoch FROM created_at)::float8 AS created_at
FROM discord_servers
WHERE enabled AND departed_at IS NULL
ORDER BY is_default DESC, created_at NULLS LAST, server_id
"""

# One server's members, offline ones too (they are needed for diffs); hide_offline and the snapshot cap
# are applied in memory. Of a member the visibility rules hide only the id is read (for access), as
# the feed announces it.
MEMBERS = """
SELECT user_id, hidden,
       CASE WHEN NOT hidden THEN username END AS username,
       CASE WHEN NOT hidden THEN status END AS status,
       CASE WHEN NOT hidden THEN role_color END AS role_color,
       last_seen
FROM discord_users
WHERE server_id = $1
"""

# Membership check of a Discord-verified user id (ignores hide_offline and hidden on purpose: a hidden
# member may still watch the town).
IS_MEMBER = """
SELECT EXISTS (SELECT 1 FROM discord_users WHERE server_id = $1 AND user_id = $2)
"""
