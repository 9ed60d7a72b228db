"""The job store: estimates and their events, in SQLite (embedded default) or PostgreSQL.

    store = open_store("sqlite:///var/llc/jobs.sqlite")    # or a plain path
    store = open_store("postgresql://postgres@127.0.0.1:5432/test")
"""
from __future__ import annotations

from service.store.base import JobRecord, JobStore, StoredEvent


def open_store(url: str, **kwargs) -> JobStore:
    """A store for `url`: `postgresql://...`/`postgres://...`, `sqlite:///path`, or a file path."""
    if url.startswith(("postgresql://", "postgres://")):
        from service.store.postgres import PostgresJobStore

        return PostgresJobStore(url, **kwargs)
    from service.store.sqlite import SQLiteJobStore

    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
    return SQLiteJobStore(path, **kwargs)


__all__ = ["JobRecord", "JobStore", "StoredEvent", "open_store"]
