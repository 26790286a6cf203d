"""What the /dzone slash commands need: a member's own hide rule, an audit of every change made from
Discord, and the viewer counts the serve replicas report.

- ``discord_visibility.set_by``: ``operator`` (the default: every row written with SQL) or ``member``
  (``/dzone hide-me``). A member's ``show-me`` deletes only its own row, so an operator's ``hide_user``
  of the same member stays; the rules themselves read ``rule`` and ``value`` only, as before.
- ``command_audit``: who changed what on which server, when, from which command. Kept when the server's
  row goes (no foreign key): it is history.
- ``serve_viewers``: each serve process's open viewers per server, refreshed every few seconds, for
  ``/dzone status``; rows silent for a day are removed by the next report.
docs/operations.md has the recipes, docs/commands.md the commands.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

from migrations.script import statements

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = """
ALTER TABLE discord_visibility ADD COLUMN set_by TEXT NOT NULL DEFAULT 'operator';
ALTER TABLE discord_visibility
    ADD CONSTRAINT discord_visibility_set_by_known CHECK (set_by IN ('operator', 'member')),
    ADD CONSTRAINT discord_visibility_member_hides_self CHECK (set_by = 'operator' OR rule = 'hide_user');
ALTER TABLE discord_visibility DROP CONSTRAINT discord_visibility_pkey,
    ADD PRIMARY KEY (server_id, rule, value, set_by);
COMMENT ON COLUMN discord_visibility.set_by IS
    'operator: written with SQL (the default). member: the member hid themself with /dzone hide-me';

CREATE TABLE command_audit (
    audit_id  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    server_id VARCHAR(20) NOT NULL,
    user_id   VARCHAR(20) NOT NULL,
    user_name VARCHAR(100) NOT NULL,
    command   TEXT NOT NULL,
    change    TEXT NOT NULL,
    CONSTRAINT command_audit_server_id_snowflake CHECK (server_id ~ '^[0-9]{1,20}$'),
    CONSTRAINT command_audit_user_id_snowflake CHECK (user_id ~ '^[0-9]{1,20}$')
);
CREATE INDEX command_audit_server_at ON command_audit (server_id, at DESC);
COMMENT ON TABLE command_audit IS
    'Every change made from Discord with a /dzone command (written by the ingest in the change''s transaction)';

CREATE TABLE serve_viewers (
    instance   TEXT NOT NULL,
    server_id  VARCHAR(20) NOT NULL,
    viewers    INTEGER NOT NULL CHECK (viewers >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, server_id)
);
COMMENT ON TABLE serve_viewers IS
    'Open viewers per serve process and server, refreshed by each serve every few seconds';
"""

DOWNGRADE = """
DROP TABLE serve_viewers;
DROP TABLE command_audit;
DELETE FROM discord_visibility v WHERE set_by = 'member'
    AND EXISTS (SELECT 1 FROM discord_visibility o WHERE o.set_by = 'operator'
                AND (o.server_id, o.rule, o.value) = (v.server_id, v.rule, v.value));
ALTER TABLE discord_visibility DROP CONSTRAINT discord_visibility_pkey,
    ADD PRIMARY KEY (server_id, rule, value);
ALTER TABLE discord_visibility DROP CONSTRAINT discord_visibility_member_hides_self,
    DROP CONSTRAINT discord_visibility_set_by_known, DROP COLUMN set_by;
"""


def upgrade() -> None:
    for statement in statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in statements(DOWNGRADE):
        op.execute(statement)
