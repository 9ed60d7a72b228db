"""The embedded default: one SQLite file that survives restarts."""
from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from typing import Iterator

from service.store.base import JobStore


class SQLiteJobStore(JobStore):
    def __init__(self, path: str):
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # Autocommit; one connection shared under the store's lock. WAL lets a second
        # process (a restarted front end, `llc` tooling) read while this one writes.
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        self.path = path
        super().__init__(conn)

    @contextmanager
    def _transaction(self, owner: str) -> Iterator[None]:
        # IMMEDIATE takes the file's write lock at BEGIN: a second writer (thread or process) waits
        # here (up to the 30 s busy timeout) instead of reading a count that is about to change.
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
