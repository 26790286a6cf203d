"""Cheaper per-row work on discord_users, for the full sync that inserts every member of a guild.

A first sync of 100,000 members spent about a fifth of PostgreSQL's time in two regular-expression
CHECKs and in calling the feed trigger only to return at once in bulk mode. The CHECKs become the
same rules written with string functions (same names, same rows refused), and the insert/delete
feed trigger gets a WHEN clause so bulk mode queues no trigger event at all.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Equal to '^[0-9]{1,20}$' and '^#[0-9a-f]{6}$' (tests/test_schema.py compares them on many strings).
USER_ID_SNOWFLAKE = "length(user_id) BETWEEN 1 AND 20 AND ltrim(user_id, '0123456789') = ''"
ROLE_COLOR_HEX = (
    "length(role_color) = 7 AND left(role_color, 1) = '#' "
    "AND ltrim(substr(role_color, 2), '0123456789abcdef') = ''"
)

CHECKS = {
    "discord_users_user_id_snowflake": (USER_ID_SNOWFLAKE, "user_id ~ '^[0-9]{1,20}$'"),
    "discord_users_role_color_hex": (ROLE_COLOR_HEX, "role_color ~ '^#[0-9a-f]{6}$'"),
}

FEED_TRIGGER = """
DROP TRIGGER discord_users_feed_insert_delete ON discord_users;
CREATE TRIGGER discord_users_feed_insert_delete AFTER INSERT OR DELETE ON discord_users
    FOR EACH ROW {when}EXECUTE FUNCTION dzone_users_feed()
"""


def _replace_checks(which: int) -> None:
    for name, definitions in CHECKS.items():
        op.execute(
            f"ALTER TABLE discord_users DROP CONSTRAINT {name}, "
            f"ADD CONSTRAINT {name} CHECK ({definitions[which]})"
        )


def _feed_trigger(when: str) -> None:
    for statement in FEED_TRIGGER.format(when=when).split(";"):
        op.execute(statement)


def upgrade() -> None:
    _replace_checks(0)
    _feed_trigger("WHEN (NOT dzone_feed_bulk()) ")


def downgrade() -> None:
    _replace_checks(1)
    _feed_trigger("")
