"""Shared fixtures. `tests/` is on sys.path (rootdir-relative imports, as for jwt_helpers)."""

from pgserver import module_db, pg_dsn  # noqa: F401  (fixtures: a real PostgreSQL)
