"""One SQL implementation of the job store; the backends differ only in their connection
and a few dialect details (placeholders, column types, table prefix)."""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from cluster.contract.errors import InvalidArgument, ResourceExhausted
from service.states import TERMINAL, JobState

_JOB_COLUMNS = ("id", "request_id", "owner", "state", "spec_json", "fingerprint", "submission_id",
                "created_at", "started_at", "ended_at", "updated_at", "progress_json", "result_json",
                "error_code", "error_message", "last_seq")


@dataclass
class JobRecord:
    id: str
    owner: str
    spec_json: str
    request_id: str = ""
    fingerprint: str = ""  # hash of the spec without its job id: same request_id + other spec = a mistake
    state: JobState = JobState.QUEUED
    submission_id: str = ""
    created_at: float = 0.0
    started_at: float = 0.0
    ended_at: float = 0.0
    updated_at: float = 0.0
    progress_json: str = "{}"
    result_json: str = ""
    error_code: str = ""
    error_message: str = ""
    last_seq: int = -1

    @property
    def spec(self) -> dict[str, Any]:
        return json.loads(self.spec_json)

    @property
    def progress(self) -> dict[str, Any]:
        return json.loads(self.progress_json or "{}")

    @property
    def result(self) -> dict[str, Any] | None:
        return json.loads(self.result_json) if self.result_json else None


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    event: dict[str, Any]


def _dumps(obj: Any) -> str:
    # NaN stays NaN (the result document uses it for diverged chains).
    return json.dumps(obj, separators=(",", ":"), allow_nan=True)


def encode_cursor(created_at: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at, job_id]).encode()).decode()


def decode_cursor(token: str) -> tuple[float, str]:
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return float(created_at), str(job_id)
    except (ValueError, TypeError, binascii.Error, RecursionError):  # RecursionError: '[[[[...' nested deep
        raise InvalidArgument(f"page_token {token[:40]!r} is not a token this server issued; "
                              "pass next_page_token from the previous response or leave it empty") from None


def too_many_active(owner: str, active: int, limit: int) -> ResourceExhausted:
    return ResourceExhausted(f"principal {owner!r} already has {active} estimates queued or running (limit {limit}, "
                             "the server's --max-active-per-client); wait for one to finish or cancel one")


class JobStore:
    """Thread-safe; every method is one short transaction. Backends give `_transaction(owner)`:
    a write transaction that no other create for that owner (in any process) interleaves with."""

    placeholder = "?"
    text_type = "TEXT"
    float_type = "REAL"
    int_type = "INTEGER"

    def __init__(self, conn: Any, prefix: str = ""):
        self._conn = conn
        self._lock = threading.RLock()
        self._jobs = f"{prefix}jobs"
        self._events = f"{prefix}events"
        self._unit_cache = f"{prefix}unit_cache"
        self._create_schema()

    # -------------------------------------------------------------- plumbing
    def _sql(self, sql: str) -> str:
        return sql.replace("?", self.placeholder) if self.placeholder != "?" else sql

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute(self._sql(sql), tuple(params))
            return cur

    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._execute(sql, params).fetchall()

    def _create_schema(self) -> None:
        t, f, i = self.text_type, self.float_type, self.int_type
        self._execute(f"""CREATE TABLE IF NOT EXISTS {self._jobs} (
            id {t} PRIMARY KEY, request_id {t} NOT NULL, owner {t} NOT NULL, state {t} NOT NULL,
            spec_json {t} NOT NULL, fingerprint {t} NOT NULL, submission_id {t} NOT NULL,
            created_at {f} NOT NULL, started_at {f} NOT NULL, ended_at {f} NOT NULL, updated_at {f} NOT NULL,
            progress_json {t} NOT NULL, result_json {t} NOT NULL, error_code {t} NOT NULL,
            error_message {t} NOT NULL, last_seq {i} NOT NULL)""")
        ix = self._jobs.split(".")[-1]  # index names take no schema
        self._execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {ix}_request ON {self._jobs} (owner, request_id) "
                      "WHERE request_id <> ''")
        self._execute(f"CREATE INDEX IF NOT EXISTS {ix}_created ON {self._jobs} (created_at, id)")
        self._execute(f"CREATE INDEX IF NOT EXISTS {ix}_state ON {self._jobs} (state)")
        self._execute(f"CREATE INDEX IF NOT EXISTS {ix}_owner ON {self._jobs} (owner, created_at, id)")
        self._execute(f"""CREATE TABLE IF NOT EXISTS {self._events} (
            job_id {t} NOT NULL, seq {i} NOT NULL, event_json {t} NOT NULL, PRIMARY KEY (job_id, seq))""")
        # Results of trajectory units by their key (cluster.trajectory.unit_keys); added after the first
        # release, so existing stores gain it here too.
        self._execute(f"""CREATE TABLE IF NOT EXISTS {self._unit_cache} (
            unit_key {t} PRIMARY KEY, result_json {t} NOT NULL, job_id {t} NOT NULL, created_at {f} NOT NULL)""")

    def _row(self, row: tuple) -> JobRecord:
        rec = JobRecord(**dict(zip(_JOB_COLUMNS, row)))
        rec.state = JobState(rec.state)
        return rec

    def _select(self, where: str, params: Sequence[Any] = (), tail: str = "") -> list[JobRecord]:
        cols = ", ".join(_JOB_COLUMNS)
        return [self._row(r) for r in self._fetchall(f"SELECT {cols} FROM {self._jobs} WHERE {where} {tail}", params)]

    def _transaction(self, owner: str) -> AbstractContextManager:
        raise NotImplementedError

    # -------------------------------------------------------------- jobs
    def create(self, record: JobRecord, *, max_active: int | None = None) -> tuple[JobRecord, bool]:
        """Stores a new QUEUED job; with a request_id already used by this owner, returns
        that job and False instead. With `max_active`, refuses (ResourceExhausted) when the
        owner already has that many unfinished jobs: the count and the insert are one
        transaction, so concurrent creates (threads, processes, replicas) cannot overshoot."""
        now = time.time()
        rec = dataclasses.replace(record, state=JobState.QUEUED, created_at=record.created_at or now, updated_at=now)
        values = [getattr(rec, c) for c in _JOB_COLUMNS]
        values[_JOB_COLUMNS.index("state")] = rec.state.value
        cols = ", ".join(_JOB_COLUMNS)
        marks = ", ".join("?" for _ in _JOB_COLUMNS)
        with self._transaction(rec.owner):
            found = self.find_by_request(rec.owner, rec.request_id) if rec.request_id else None
            if found is not None:
                return found, False
            if max_active is not None:
                active = self.count_active(rec.owner)
                if active >= max_active:
                    raise too_many_active(rec.owner, active, max_active)
            cur = self._execute(f"INSERT INTO {self._jobs} ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING", values)
            if cur.rowcount == 1:
                return rec, True
        if rec.request_id:
            found = self.find_by_request(rec.owner, rec.request_id)
            if found is not None:
                return found, False
        raise InvalidArgument(f"estimate id {rec.id!r} already exists; ask the server for a new one")

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._select("id = ?", (job_id,))
        return rows[0] if rows else None

    def find_by_request(self, owner: str, request_id: str) -> JobRecord | None:
        rows = self._select("owner = ? AND request_id = ?", (owner, request_id))
        return rows[0] if rows else None

    def list(self, *, states: Iterable[JobState] = (), owner: str | None = None, page_size: int = 50,
             page_token: str = "") -> tuple[list[JobRecord], str]:
        """Newest first (only `owner`'s if given). Returns a page and the token of the next one
        ('' on the last page)."""
        where, params = ["1 = 1"], []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        states = [JobState(s).value for s in states]
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            params += states
        if page_token:
            created_at, job_id = decode_cursor(page_token)
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params += [created_at, created_at, job_id]
        rows = self._select(" AND ".join(where), params, f"ORDER BY created_at DESC, id DESC LIMIT {int(page_size) + 1}")
        page, more = rows[:page_size], len(rows) > page_size
        return page, encode_cursor(page[-1].created_at, page[-1].id) if more and page else ""

    def active(self) -> list[JobRecord]:
        """Jobs not yet in a terminal state, oldest first (a restarted front end follows them)."""
        marks = ", ".join("?" for _ in TERMINAL)
        return self._select(f"state NOT IN ({marks})", [s.value for s in TERMINAL], "ORDER BY created_at, id")

    def count_active(self, owner: str) -> int:
        marks = ", ".join("?" for _ in TERMINAL)
        return self._fetchall(f"SELECT COUNT(*) FROM {self._jobs} WHERE owner = ? AND state NOT IN ({marks})",
                              [owner, *(s.value for s in TERMINAL)])[0][0]

    def transition(self, job_id: str, new: JobState, *, result: dict[str, Any] | None = None,
                   error_code: str = "", error_message: str = "") -> JobRecord | None:
        """Moves the job to `new` if that is a legal step from its current state
        (compare-and-set, so two writers cannot both finish a job). None if not."""
        now = time.time()
        sets = ["state = ?", "updated_at = ?"]
        params: list[Any] = [new.value, now]
        if new == JobState.RUNNING:
            sets.append("started_at = ?")
            params.append(now)
        if new.is_terminal:
            sets.append("ended_at = ?")
            params.append(now)
        if result is not None:
            sets.append("result_json = ?")
            params.append(_dumps(result))
        if error_code or error_message:
            sets += ["error_code = ?", "error_message = ?"]
            params += [error_code, error_message]
        preds = [s.value for s in new.predecessors()]
        if not preds:
            return None
        marks = ", ".join("?" for _ in preds)
        with self._lock:
            cur = self._execute(f"UPDATE {self._jobs} SET {', '.join(sets)} WHERE id = ? AND state IN ({marks})",
                                [*params, job_id, *preds])
            changed = cur.rowcount == 1
        return self.get(job_id) if changed else None

    def set_submission(self, job_id: str, submission_id: str) -> None:
        self._execute(f"UPDATE {self._jobs} SET submission_id = ?, updated_at = ? WHERE id = ?",
                      (submission_id, time.time(), job_id))

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        self._execute(f"UPDATE {self._jobs} SET progress_json = ?, updated_at = ? WHERE id = ?",
                      (_dumps(progress), time.time(), job_id))

    # -------------------------------------------------------------- events
    def add_events(self, job_id: str, events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Stores events by their `seq`; returns those not stored before (a re-read log repeats them)."""
        new: list[dict[str, Any]] = []
        with self._lock:
            for event in events:
                cur = self._execute(f"INSERT INTO {self._events} (job_id, seq, event_json) VALUES (?, ?, ?) "
                                    "ON CONFLICT DO NOTHING", (job_id, int(event["seq"]), _dumps(event)))
                if cur.rowcount == 1:
                    new.append(event)
            if new:
                self._execute(f"UPDATE {self._jobs} SET last_seq = ?, updated_at = ? WHERE id = ? AND last_seq < ?",
                              (max(e["seq"] for e in new), time.time(), job_id, max(e["seq"] for e in new)))
        return new

    def events(self, job_id: str, after_seq: int = -1, limit: int = 10_000) -> list[StoredEvent]:
        rows = self._fetchall(f"SELECT seq, event_json FROM {self._events} WHERE job_id = ? AND seq > ? "
                              f"ORDER BY seq LIMIT {int(limit)}", (job_id, after_seq))
        return [StoredEvent(seq, json.loads(text)) for seq, text in rows]

    # -------------------------------------------------------------- unit cache
    def cached_units(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Stored results of the units with these keys (those without one are absent)."""
        keys, out = list(dict.fromkeys(keys)), {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = self._fetchall(f"SELECT unit_key, result_json FROM {self._unit_cache} WHERE unit_key IN "
                                  f"({', '.join('?' for _ in chunk)})", chunk)
            out.update((k, json.loads(text)) for k, text in rows)
        return out

    def put_cached_units(self, job_id: str, results: dict[str, dict[str, Any]]) -> int:
        """Stores unit results by key (a key stored before keeps its first result); returns how many were new."""
        added = 0
        with self._lock:
            for key, result in results.items():
                cur = self._execute(f"INSERT INTO {self._unit_cache} (unit_key, result_json, job_id, created_at) "
                                    "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", (key, _dumps(result), job_id, time.time()))
                added += cur.rowcount == 1
        return added

    def close(self) -> None:
        with self._lock:
            self._conn.close()

