"""PostgreSQL for deployments: `postgresql://user@host:5432/db`; tables live in `schema`."""
from __future__ import annotations

import hashlib
import logging
import re
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from cluster.contract.errors import InvalidArgument, Unavailable
from service.store.base import JobStore

log = logging.getLogger(__name__)


class PostgresJobStore(JobStore):
    placeholder = "%s"
    float_type = "DOUBLE PRECISION"
    int_type = "BIGINT"

    def __init__(self, url: str, schema: str = "llc"):
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
            raise InvalidArgument(f"store schema {schema!r} must be a lowercase SQL identifier, e.g. 'llc'")
        self.url, self.schema = url, schema
        self._in_transaction = False
        conn = self._connect()
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        super().__init__(conn, prefix=f"{schema}.")

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise Unavailable(f"cannot connect to the PostgreSQL job store at {self.url}: {exc}".strip()) from None

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        import psycopg

        with self._lock:
            try:
                return super()._execute(sql, params)
            except psycopg.OperationalError as exc:
                if not self._conn.closed or self._in_transaction:
                    raise
                # The server restarted or dropped us: every statement is its own transaction, so
                # reconnecting and retrying once is safe.
                log.warning("job store connection lost (%s); reconnecting", exc)
                self._conn = self._connect()
                return super()._execute(sql, params)

    @contextmanager
    def _transaction(self, owner: str) -> Iterator[None]:
        """A transaction holding an advisory lock on (schema, owner): creates for one owner run one
        at a time across every front-end replica; other owners and other statements do not wait."""
        import psycopg

        key = int.from_bytes(hashlib.sha256(f"{self.schema}\0{owner}".encode()).digest()[:8], "big", signed=True)
        with self._lock:
            self._execute("BEGIN")  # (a lost connection is noticed and replaced here, before anything ran)
            self._in_transaction = True
            try:
                self._execute("SELECT pg_advisory_xact_lock(?)", (key,))
                yield
            except psycopg.OperationalError as exc:
                if not self._conn.closed:
                    raise
                raise Unavailable(f"the job store connection was lost mid-transaction ({exc}); nothing was "
                                  "stored: retry (with the same request_id it is safe)") from None
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
            finally:
                self._in_transaction = False

    def drop(self) -> None:
        """Deletes the schema and everything in it (tests use a schema each)."""
        self._execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
