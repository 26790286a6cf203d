"""Alembic migrations: the only place the schema is defined."""
