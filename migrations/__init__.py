"""Alembic migrations; the same revisions build PostgreSQL and SQLite."""
