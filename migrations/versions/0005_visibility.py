"""Member visibility rules per server: hidden users, excluded roles, an "only these roles" list and an
opt-out role that members give themselves. Operators write ``discord_visibility``; the ingest writes the
members' role ids and the guild's roles. ``discord_users.hidden`` is computed by a trigger from the
rules, recomputed when the rules or the role names change, and the feed announces a member becoming
hidden as a ``delete`` with ``"hidden": true`` (ids only) and becoming visible as an ``upsert``: a hidden
member never reaches a viewer.
docs/operations.md has the recipes, docs/change-feed.md the feed's rules.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

from migrations.script import statements

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = """
ALTER TABLE discord_users ADD COLUMN role_ids TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE discord_users ADD COLUMN hidden BOOLEAN NOT NULL DEFAULT FALSE;
COMMENT ON COLUMN discord_users.role_ids IS 'Ids of the member''s roles (written by the ingest)';
COMMENT ON COLUMN discord_users.hidden IS 'Left out by the visibility rules (computed by a trigger, never written)';

CREATE TABLE discord_roles (
    server_id VARCHAR(20) NOT NULL REFERENCES discord_servers(server_id) ON DELETE CASCADE,
    role_id   VARCHAR(20) NOT NULL,
    name      VARCHAR(100) NOT NULL,
    PRIMARY KEY (server_id, role_id),
    CONSTRAINT discord_roles_role_id_snowflake CHECK (role_id ~ '^[0-9]{1,20}$')
);
COMMENT ON TABLE discord_roles IS 'The guild''s roles, written by the ingest, so that rules can name a role';

CREATE TABLE discord_visibility (
    server_id VARCHAR(20) NOT NULL REFERENCES discord_servers(server_id) ON DELETE CASCADE,
    rule      TEXT NOT NULL,
    value     VARCHAR(100) NOT NULL,
    PRIMARY KEY (server_id, rule, value),
    CONSTRAINT discord_visibility_rule_known
        CHECK (rule IN ('hide_user', 'exclude_role', 'include_role', 'opt_out_role')),
    CONSTRAINT discord_visibility_user_snowflake CHECK (rule <> 'hide_user' OR value ~ '^[0-9]{1,20}$')
);
COMMENT ON TABLE discord_visibility IS
    'Operator rules: who is left out of the town. Written with SQL, never by the ingest';
COMMENT ON COLUMN discord_visibility.rule IS
    'hide_user: value is a user id. exclude_role, opt_out_role: members with the role are hidden. '
    'include_role: when a server has any, only members with one of them are shown';
COMMENT ON COLUMN discord_visibility.value IS 'A user id, or a role given by its id or its exact name';
"""

# Role rules match a role by id or by exact name (names through discord_roles), so an opt-out role
# created after the rule ("hide me from d-zone") counts from the moment the ingest writes it.
# PL/pgSQL, not SQL: its statements' plans are cached per session, where a SQL function with CTEs is
# planned again on every call (it runs once per written row). A server without rules costs one probe.
FUNCTIONS = """
CREATE FUNCTION dzone_member_hidden(p_server_id text, p_user_id text, p_role_ids text[])
RETURNS boolean LANGUAGE plpgsql STABLE AS $$
DECLARE
    held text[] := p_role_ids;  -- the member's roles, by id and by name
    verdict boolean;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM discord_visibility WHERE server_id = p_server_id) THEN
        RETURN FALSE;
    END IF;
    IF cardinality(p_role_ids) > 0 THEN
        held := held || ARRAY(
            SELECT name::text FROM discord_roles WHERE server_id = p_server_id AND role_id = ANY (p_role_ids));
    END IF;
    SELECT bool_or(rule = 'hide_user' AND value = p_user_id)
        OR bool_or(rule IN ('exclude_role', 'opt_out_role') AND value = ANY (held))
        OR (bool_or(rule = 'include_role') AND NOT bool_or(rule = 'include_role' AND value = ANY (held)))
    INTO verdict
    FROM discord_visibility WHERE server_id = p_server_id;
    RETURN coalesce(verdict, FALSE);
END
$$;

CREATE FUNCTION dzone_users_hidden() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.hidden := dzone_member_hidden(NEW.server_id, NEW.user_id, NEW.role_ids);
    RETURN NEW;
END
$$;

-- True while the rows being written are judged for the whole server at once (dzone_recompute_hidden):
-- during the recompute itself, and in the ingest's bulk mode (a full sync of many rows, announced as
-- one resync), which recomputes before its commit. A check per row then would only repeat the verdict;
-- it made a 1M-member first sync twice as slow.
CREATE FUNCTION dzone_hidden_set_based() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT dzone_feed_bulk() OR coalesce(current_setting('dzone.recomputing_hidden', TRUE), '') = 'on'
$$;

-- Every insert (an upsert's proposed row too), but an update only when what decides changed: a
-- presence or a rename leaves the row's visibility as it was. Writing ``hidden`` itself recomputes it,
-- so an operator's UPDATE cannot set it against the rules.
CREATE TRIGGER discord_users_hidden_insert BEFORE INSERT ON discord_users
    FOR EACH ROW WHEN (NOT dzone_hidden_set_based()) EXECUTE FUNCTION dzone_users_hidden();
CREATE TRIGGER discord_users_hidden_update BEFORE UPDATE ON discord_users
    FOR EACH ROW
    WHEN ((OLD.server_id, OLD.user_id, OLD.role_ids, OLD.hidden)
          IS DISTINCT FROM (NEW.server_id, NEW.user_id, NEW.role_ids, NEW.hidden)
          AND NOT dzone_hidden_set_based())
    EXECUTE FUNCTION dzone_users_hidden();

-- One server's rows whose visibility changed are updated (and so announced by the feed trigger). Set-based:
-- the rules become arrays of role ids once, so each row costs two array overlaps, not a lookup of its own
-- (the same verdict as dzone_member_hidden, which judges one row).
CREATE FUNCTION dzone_recompute_hidden(p_server_id text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    hidden_users text[];
    excluded text[];  -- role ids (given, or named through discord_roles) of exclude_role / opt_out_role
    included text[];
    any_included boolean;
BEGIN
    SELECT coalesce(array_agg(value::text) FILTER (WHERE rule = 'hide_user'), '{}'),
           coalesce(array_agg(value::text) FILTER (WHERE rule IN ('exclude_role', 'opt_out_role')), '{}'),
           coalesce(array_agg(value::text) FILTER (WHERE rule = 'include_role'), '{}'),
           coalesce(bool_or(rule = 'include_role'), FALSE)
    INTO hidden_users, excluded, included, any_included
    FROM discord_visibility WHERE server_id = p_server_id;
    SELECT excluded || coalesce(array_agg(role_id::text) FILTER (WHERE name = ANY (excluded)), '{}'),
           included || coalesce(array_agg(role_id::text) FILTER (WHERE name = ANY (included)), '{}')
    INTO excluded, included
    FROM discord_roles WHERE server_id = p_server_id;
    PERFORM set_config('dzone.recomputing_hidden', 'on', TRUE);
    UPDATE discord_users SET hidden = NOT hidden
    WHERE server_id = p_server_id
      AND hidden <> (user_id = ANY (hidden_users) OR role_ids && excluded
                     OR (any_included AND NOT role_ids && included));
    PERFORM set_config('dzone.recomputing_hidden', 'off', TRUE);
END
$$;

CREATE FUNCTION dzone_visibility_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM dzone_recompute_hidden(OLD.server_id);
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.server_id <> OLD.server_id) THEN
        PERFORM dzone_recompute_hidden(NEW.server_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER discord_visibility_changed AFTER INSERT OR UPDATE OR DELETE ON discord_visibility
    FOR EACH ROW EXECUTE FUNCTION dzone_visibility_changed();

-- A role's name matters only where a role rule exists: other servers are not scanned. Per statement, so
-- a sync that writes a guild's 250 roles recomputes that server once.
CREATE FUNCTION dzone_roles_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dzone_recompute_hidden(c.server_id)
    FROM (SELECT DISTINCT server_id FROM changed_roles) c
    WHERE EXISTS (SELECT 1 FROM discord_visibility v WHERE v.server_id = c.server_id AND v.rule <> 'hide_user');
    RETURN NULL;
END
$$;

CREATE TRIGGER discord_roles_inserted AFTER INSERT ON discord_roles
    REFERENCING NEW TABLE AS changed_roles FOR EACH STATEMENT EXECUTE FUNCTION dzone_roles_changed();
CREATE TRIGGER discord_roles_updated AFTER UPDATE ON discord_roles
    REFERENCING NEW TABLE AS changed_roles FOR EACH STATEMENT EXECUTE FUNCTION dzone_roles_changed();
CREATE TRIGGER discord_roles_deleted AFTER DELETE ON discord_roles
    REFERENCING OLD TABLE AS changed_roles FOR EACH STATEMENT EXECUTE FUNCTION dzone_roles_changed();
"""

# A visible row is announced as before. A hidden one is announced by its ids only, as a delete with
# "hidden": true (the member is still in the guild, which matters to a passworded server's access): so
# a row turning hidden is such a delete, turning visible an upsert, and a row deleted is a plain delete,
# hidden or not. A hidden row's other changes, and a visible row's change of role ids alone, announce
# nothing.
FEED = """
CREATE OR REPLACE FUNCTION dzone_users_feed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF dzone_feed_bulk() THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND (OLD.server_id, OLD.user_id) IS NOT DISTINCT FROM (NEW.server_id, NEW.user_id)
            AND ((OLD.hidden AND NEW.hidden)
                 OR (NOT OLD.hidden AND NOT NEW.hidden
                     AND (OLD.username, OLD.status, OLD.role_color)
                         IS NOT DISTINCT FROM (NEW.username, NEW.status, NEW.role_color))) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE'
            AND (OLD.server_id, OLD.user_id) IS DISTINCT FROM (NEW.server_id, NEW.user_id)) THEN
        PERFORM pg_notify('dzone_feed', json_build_object(
            'kind', 'user', 'op', 'delete', 'seq', nextval('dzone_feed_seq'),
            'server_id', OLD.server_id, 'user_id', OLD.user_id, 'hidden', false)::text);
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.hidden THEN
        PERFORM pg_notify('dzone_feed', json_build_object(
            'kind', 'user', 'op', 'delete', 'seq', nextval('dzone_feed_seq'),
            'server_id', NEW.server_id, 'user_id', NEW.user_id, 'hidden', true)::text);
    ELSIF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('dzone_feed', json_build_object(
            'kind', 'user', 'op', 'upsert', 'seq', nextval('dzone_feed_seq'),
            'server_id', NEW.server_id, 'user_id', NEW.user_id, 'username', NEW.username,
            'status', NEW.status, 'role_color', NEW.role_color)::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE VIEW server_presence_summary AS
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
       max(u.last_seen) AS last_change,
       count(*) FILTER (WHERE u.hidden) AS hidden
FROM discord_servers s
LEFT JOIN discord_users u USING (server_id)
GROUP BY s.server_id;
"""

# 0001's definitions, restored on downgrade.
DOWNGRADE = """
CREATE OR REPLACE FUNCTION dzone_users_feed() RETURNS trigger LANGUAGE plpgsql AS $$
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

DROP VIEW server_presence_summary;
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

DROP TABLE discord_visibility;
DROP TABLE discord_roles;
DROP TRIGGER discord_users_hidden_insert ON discord_users;
DROP TRIGGER discord_users_hidden_update ON discord_users;
DROP FUNCTION dzone_roles_changed();
DROP FUNCTION dzone_visibility_changed();
DROP FUNCTION dzone_recompute_hidden(text);
DROP FUNCTION dzone_users_hidden();
DROP FUNCTION dzone_hidden_set_based();
DROP FUNCTION dzone_member_hidden(text, text, text[]);
ALTER TABLE discord_users DROP COLUMN hidden;
ALTER TABLE discord_users DROP COLUMN role_ids;
"""


def upgrade() -> None:
    for statement in statements(TABLES + FUNCTIONS + FEED):
        op.execute(statement)


def downgrade() -> None:
    for statement in statements(DOWNGRADE):
        op.execute(statement)
