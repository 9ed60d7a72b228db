"""PostgreSQL for deployments: `postgresql://user@host:5432/db`; tables live in `schema`."""
from __future__ import annotations

import re

from cluster.errors import InvalidArgument, Unavailable
from service.store.base import JobStore


class PostgresJobStore(JobStore):
    placeholder = "%s"
    float_type = "DOUBLE PRECISION"
    int_type = "BIGINT"

    def __init__(self, url: str, schema: str = "llc"):
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
            raise InvalidArgument(f"store schema {schema!r} must be a lowercase SQL identifier, e.g. 'llc'")
        import psycopg

        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise Unavailable(f"cannot connect to the PostgreSQL job store at {url}: {exc}".strip()) from None
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        self.schema = schema
        super().__init__(conn, prefix=f"{schema}.")

    def drop(self) -> None:
        """Deletes the schema and everything in it (tests use a schema each)."""
        self._execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
