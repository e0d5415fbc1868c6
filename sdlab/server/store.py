"""The job store: jobs and their results in SQLite, so a restart loses nothing.

Every state change is one conditional `UPDATE` inside a transaction (`queued -> running ->
done | failed | cancelled`), so a job completes exactly once even when a cancellation races the
worker, and an append-only `events` table records each transition. One connection guarded by a
lock serves every thread of the process (SQLite calls take microseconds; WAL lets other
processes, such as a test or `sqlite3` on the command line, read while the server writes).

Jobs carry their request with seeds already resolved, so a job re-run after a crash makes the
same images. Image files live under `results_dir/<job id>/<k>.png`; rows hold paths relative to it
and the SHA-256 of each file as written, checked whenever it is served.

The database and the results folder carry the same store id (`meta.store_id` and
`results_dir/.store-id`): result folders are only ever deleted as orphans when the two match, and a
new or empty database beside existing results is refused (a 0-byte `jobs.db` would otherwise
disown every result). A file that is not a readable SQLite database is refused in one line too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SdlabError
from ..request import GenerationRequest

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    state       TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    params      TEXT NOT NULL,
    request     TEXT NOT NULL,
    batch_key   TEXT NOT NULL,
    num_images  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    crashes     INTEGER NOT NULL DEFAULT 0,
    denoising_started_at REAL,
    run_token   TEXT,
    error       TEXT,
    seconds     REAL,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at);
CREATE TABLE IF NOT EXISTS images (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    k      INTEGER NOT NULL,
    path   TEXT NOT NULL,
    sha256 TEXT,
    PRIMARY KEY (job_id, k)
);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  TEXT NOT NULL,
    state   TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at      REAL NOT NULL,
    detail  TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class QueueFull(SdlabError):
    """The queue holds `max_queue` jobs already; try again later."""


class StoreLocked(SdlabError):
    """Another server process owns this database."""


class StoreMismatch(SdlabError):
    """The job database and the results folder do not belong together (e.g. a new database
    beside existing results): nothing is deleted, the server does not start."""


class StoreCorrupt(SdlabError):
    """The job database is not a readable SQLite database."""


class StorageFull(SdlabError):
    """The disk (or the database's page limit) is full: nothing was written."""


STORE_ID_FILE = ".store-id"


def is_disk_full(error: BaseException) -> bool:
    """SQLite's SQLITE_FULL (what a write that hits ENOSPC becomes) or an OSError with ENOSPC/EDQUOT."""
    if isinstance(error, sqlite3.OperationalError):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(error)
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def bytes_digest(data: bytes) -> str:
    """The SHA-256 (hex) stored with each result PNG."""
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str | Path) -> str:
    return bytes_digest(Path(path).read_bytes())


@dataclass(frozen=True)
class Job:
    """One row of `jobs`, decoded."""

    id: str
    seq: int
    state: str
    params: dict[str, Any]
    request: GenerationRequest
    batch_key: str
    num_images: int
    attempts: int
    crashes: int
    run_token: str | None
    error: str | None
    seconds: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def seeds(self) -> list[int]:
        return list(self.request.seed)


class JobStore:
    """Jobs and results of one server, in `db_path` and `results_dir`."""

    def __init__(self, db_path: str | Path, results_dir: str | Path):
        self.db_path = Path(db_path)
        self.results_dir = Path(results_dir).resolve()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._lock_file = None
        try:
            self._open()
        except sqlite3.DatabaseError as e:
            with contextlib.suppress(Exception):
                self._conn.close()
            if getattr(e, "sqlite_errorcode", None) not in (None, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                # not damage (locked, read-only, full...): say so, in one line too
                raise SdlabError(f"could not open the job database {self.db_path}: {e}") from None
            raise StoreCorrupt(
                f"{self.db_path} is not a readable sdlab job database ({e}); restore it from a backup, or move it "
                f"(and {self.results_dir}) aside and start again, or pass a new --data-dir"
            ) from None
        self.store_id = self._check_store_id()

    def _open(self) -> None:
        self._conn = sqlite3.connect(str(self.db_path), isolation_level=None, check_same_thread=False, timeout=10.0)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        problems = [r[0] for r in self._conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(problems[:3]))
        self._conn.executescript(_SCHEMA)
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row["value"]) != SCHEMA_VERSION:
                raise SdlabError(
                    f"{self.db_path} has job schema version {row['value']}, this sdlab writes {SCHEMA_VERSION}; "
                    f"use a new --data-dir"
                )
            _add_missing_columns(db)

    def _check_store_id(self) -> str:
        """The id shared by the database and the results folder; refuse a pair that does not match."""
        id_file = self.results_dir / STORE_ID_FILE
        in_folder = id_file.read_text().strip() if id_file.is_file() else None
        folders = sum(1 for child in self.results_dir.iterdir() if child.is_dir() and _is_uuid(child.name))
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
            in_db = row["value"] if row is not None else None
            jobs = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
            if in_db is not None and in_db == in_folder:
                self._owns_results = True
                return in_db
            what = (
                f"store id {in_folder}, {folders} result folder(s)"
                if in_folder
                else f"{folders} result folder(s) without a store id"
            )
            if in_db is None and jobs == 0:
                if folders:
                    raise StoreMismatch(
                        f"{self.db_path} is a new or empty job database, but {self.results_dir} holds the results "
                        f"of another one ({what}); nothing was deleted. Restore the jobs.db that made them (with "
                        f"its -wal file), or move {self.results_dir} aside to start empty, or pass a new --data-dir"
                    )
                store_id = in_folder or uuid.uuid4().hex  # a new store (or one that died while being created)
            elif (in_folder is not None and in_folder != in_db) or (
                in_folder is None and in_db is not None and folders
            ):
                raise StoreMismatch(
                    f"{self.db_path} (store id {in_db or 'none'}) did not make the results in {self.results_dir} "
                    f"({what}); nothing was deleted. Put each jobs.db beside its own results/, or pass a new --data-dir"
                )
            else:  # from before store ids (its jobs made these results), or results/ was emptied
                store_id = in_db or uuid.uuid4().hex
            # mark both; orphans are only cleaned on later starts, once the pair is known to belong together
            db.execute("INSERT OR REPLACE INTO meta VALUES ('store_id', ?)", (store_id,))
            _write_atomically(id_file, store_id + "\n")
        self._owns_results = False
        return store_id

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), one thread at a time."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if is_disk_full(e):
                    raise StorageFull(f"the disk of {self.db_path} is full ({e}); nothing was written") from e
                raise

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self.release_lock()
            self._conn.close()

    def acquire_lock(self) -> None:
        """Become the one process that runs this database's queue (released on exit, even on SIGKILL)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: one server per data folder is up to the operator
            return
        if self._lock_file is not None:
            return
        f = open(self.db_path.with_name(self.db_path.name + ".lock"), "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise StoreLocked(
                f"another sdlab server is running on {self.db_path}; stop it or give this one its own --data-dir"
            ) from None
        self._lock_file = f

    def release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    @staticmethod
    def _event(db: sqlite3.Connection, job_id: str, state: str, attempt: int, detail: str | None = None) -> None:
        db.execute(
            "INSERT INTO events (job_id, state, attempt, at, detail) VALUES (?, ?, ?, ?, ?)",
            (job_id, state, attempt, time.time(), detail),
        )

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"],
            seq=row["seq"],
            state=row["state"],
            params=json.loads(row["params"]),
            request=GenerationRequest.from_dict(json.loads(row["request"])),
            batch_key=row["batch_key"],
            num_images=row["num_images"],
            attempts=row["attempts"],
            crashes=row["crashes"],
            run_token=row["run_token"],
            error=row["error"],
            seconds=row["seconds"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
        )

    # ------------------------------------------------------------------ submitting and reading

    def submit(
        self, request: GenerationRequest, params: dict[str, Any], *, batch_key: str, max_queue: int
    ) -> tuple[Job, int]:
        """Queue a job unless `max_queue` jobs wait already (QueueFull). Returns (job, position)."""
        job_id = str(uuid.uuid4())
        with self._transaction() as db:
            queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
            if queued >= max_queue:
                raise QueueFull(f"the queue holds {queued} jobs (max_queue={max_queue})")
            db.execute(
                "INSERT INTO jobs (id, state, params, request, batch_key, num_images, created_at) "
                "VALUES (?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, json.dumps(params), json.dumps(request.to_dict()), batch_key, len(request), time.time()),
            )
            self._event(db, job_id, "queued", 0)
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row), queued + 1

    def get(self, job_id: str) -> Job | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return self._job(rows[0]) if rows else None

    def position(self, job: Job) -> int | None:
        """1 for the next job to run; None unless queued."""
        if job.state != "queued":
            return None
        return self._query("SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND seq <= ?", (job.seq,))[0][0]

    def list(self, *, state: str | None = None, limit: int = 20, offset: int = 0) -> tuple[list[Job], int]:
        """Newest first; returns (page, total)."""
        where, args = ("WHERE state = ?", [state]) if state else ("", [])
        total = self._query(f"SELECT COUNT(*) FROM jobs {where}", args)[0][0]
        rows = self._query(f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ? OFFSET ?", [*args, limit, offset])
        return [self._job(r) for r in rows], total

    def image_path(self, job_id: str, k: int) -> tuple[Path, str | None] | None:
        """The file of image `k` of a done job, never outside `results_dir`, and the SHA-256 it was
        written with (None for images written before digests); None if absent."""
        rows = self._query(
            "SELECT images.path, images.sha256 FROM images JOIN jobs ON jobs.id = images.job_id "
            "WHERE images.job_id = ? AND images.k = ? AND jobs.state = 'done'",
            (job_id, k),
        )
        if not rows:
            return None
        path = (self.results_dir / rows[0]["path"]).resolve()
        if not path.is_relative_to(self.results_dir) or not path.is_file():
            return None
        return path, rows[0]["sha256"]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATES}
        for row in self._query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            out[row["state"]] = row["n"]
        return out

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self._query(
                "SELECT state, attempt, at, detail FROM events WHERE job_id = ? ORDER BY id", (job_id,)
            )
        ]

    def job_dir(self, job_id: str) -> Path:
        return self.results_dir / str(uuid.UUID(job_id))

    # ------------------------------------------------------------------ the worker's transitions

    def filling_batch(self, batch_size: int) -> float | None:
        """When the oldest queued job was queued, if fewer than `batch_size` queued jobs could share
        its pipeline call (None if the queue is empty or holds a full batch)."""
        rows = self._query(
            "SELECT created_at, (SELECT COUNT(*) FROM (SELECT 1 FROM jobs AS other WHERE other.state = 'queued' "
            "AND other.batch_key = first.batch_key LIMIT ?)) AS n "
            "FROM jobs AS first WHERE state = 'queued' ORDER BY seq LIMIT 1",
            (batch_size,),
        )
        if not rows or rows[0]["n"] >= batch_size:
            return None
        return rows[0]["created_at"]

    def claim(self, *, batch_size: int, max_images: int) -> list[Job]:
        """Mark the oldest queued job, and up to `batch_size - 1` later ones that can share its
        pipeline call, as running. Returns them (empty if the queue is empty)."""
        token = uuid.uuid4().hex
        with self._transaction() as db:
            first = db.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if first is None:
                return []
            rows = [first]
            images = first["num_images"]
            if batch_size > 1:
                for row in db.execute(
                    "SELECT * FROM jobs WHERE state = 'queued' AND batch_key = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (first["batch_key"], first["seq"], 4 * batch_size),
                ).fetchall():
                    if len(rows) >= batch_size:
                        break
                    if images + row["num_images"] <= max_images:
                        rows.append(row)
                        images += row["num_images"]
            now = time.time()
            for row in rows:
                db.execute(
                    "UPDATE jobs SET state = 'running', run_token = ?, attempts = attempts + 1, started_at = ?, "
                    "denoising_started_at = NULL "
                    "WHERE id = ? AND state = 'queued'",
                    (token, now, row["id"]),
                )
                self._event(db, row["id"], "running", row["attempts"] + 1)
            claimed = db.execute(
                "SELECT * FROM jobs WHERE run_token = ? AND state = 'running' ORDER BY seq", (token,)
            ).fetchall()
        return [self._job(r) for r in claimed]

    def finish(
        self, job: Job, paths: Sequence[Path], seconds: float, digests: Sequence[str | None] | None = None
    ) -> bool:
        """running -> done with its images (and their SHA-256 as written); False (nothing written)
        if the job left `running`."""
        digests = list(digests) if digests is not None else [None] * len(paths)
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'done', seconds = ?, finished_at = ?, error = NULL "
                "WHERE id = ? AND state = 'running' AND run_token = ?",
                (seconds, time.time(), job.id, job.run_token),
            )
            if cur.rowcount != 1:
                return False
            db.executemany(
                "INSERT OR REPLACE INTO images (job_id, k, path, sha256) VALUES (?, ?, ?, ?)",
                [
                    (job.id, k, str(Path(p).resolve().relative_to(self.results_dir)), digest)
                    for k, (p, digest) in enumerate(zip(paths, digests, strict=True))
                ],
            )
            self._event(db, job.id, "done", job.attempts)
        return True

    def mark_denoising(self, jobs: Sequence[Job]) -> None:
        """Note that these running jobs reached the model's denoising loop: only a death after this
        counts against them in `recover`."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE jobs SET denoising_started_at = ? "
                "WHERE id = ? AND state = 'running' AND run_token = ? AND denoising_started_at IS NULL",
                [(time.time(), job.id, job.run_token) for job in jobs],
            )

    def fail(self, job: Job, error: str) -> bool:
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? "
                "WHERE id = ? AND state = 'running' AND run_token = ?",
                (error, time.time(), job.id, job.run_token),
            )
            if cur.rowcount == 1:
                self._event(db, job.id, "failed", job.attempts, error)
        return cur.rowcount == 1

    def requeue(self, job: Job, reason: str) -> bool:
        """running -> queued, keeping its place (an interrupted run does not count as an attempt)."""
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'queued', run_token = NULL, started_at = NULL, attempts = attempts - 1 "
                "WHERE id = ? AND state = 'running' AND run_token = ?",
                (job.id, job.run_token),
            )
            if cur.rowcount == 1:
                self._event(db, job.id, "queued", job.attempts - 1, reason)
        return cur.rowcount == 1

    def cancel(self, job_id: str) -> str | None:
        """queued or running -> cancelled. Returns the state the job was in (None if unknown)."""
        with self._transaction() as db:
            row = db.execute("SELECT state, attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["state"] in ("queued", "running"):
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE id = ? AND state = ?",
                    (time.time(), job_id, row["state"]),
                )
                self._event(db, job_id, "cancelled", row["attempts"])
            return row["state"]

    def recover(self, *, max_attempts: int) -> dict[str, int]:
        """At start-up: jobs left `running` by a process that died run again, unless it died while
        they were denoising `max_attempts` times already (then they fail: they may be what kills it).
        A death before a job's first denoising step (a crash loop shorter than one job) is not its fault."""
        out = {"requeued": 0, "failed": 0}
        with self._transaction() as db:
            for row in db.execute(
                "SELECT id, attempts, crashes, denoising_started_at FROM jobs WHERE state = 'running'"
            ).fetchall():
                crashes = row["crashes"] + (row["denoising_started_at"] is not None)
                if crashes >= max_attempts:
                    error = f"the server stopped {crashes} times while denoising this job; not retried"
                    db.execute(
                        "UPDATE jobs SET state = 'failed', crashes = ?, error = ?, finished_at = ? WHERE id = ?",
                        (crashes, error, time.time(), row["id"]),
                    )
                    self._event(db, row["id"], "failed", row["attempts"], error)
                    out["failed"] += 1
                else:
                    db.execute(
                        "UPDATE jobs SET state = 'queued', run_token = NULL, crashes = ? WHERE id = ?",
                        (crashes, row["id"]),
                    )
                    detail = "recovered after a restart" + (
                        "" if row["denoising_started_at"] is not None else " (it had not started denoising)"
                    )
                    self._event(db, row["id"], "queued", row["attempts"], detail)
                    out["requeued"] += 1
        return out

    # ------------------------------------------------------------------ retention

    def expire(self, older_than_seconds: float, *, now: float | None = None) -> int:
        """Delete finished jobs (rows and files) that finished more than `older_than_seconds` ago."""
        cutoff = (time.time() if now is None else now) - older_than_seconds
        rows = self._query(
            "SELECT id FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND finished_at < ?", (cutoff,)
        )
        for row in rows:
            # files first: a crash in between leaves a row without files (served as 404, deleted next time)
            shutil.rmtree(self.job_dir(row["id"]), ignore_errors=True)
            with self._transaction() as db:
                db.execute("DELETE FROM images WHERE job_id = ?", (row["id"],))
                db.execute("DELETE FROM events WHERE job_id = ?", (row["id"],))
                db.execute("DELETE FROM jobs WHERE id = ?", (row["id"],))
        return len(rows)

    def remove_orphans(self) -> int:
        """Delete result folders that belong to no job (left by a crash during `expire`); only when
        the database and the results folder carried the same store id when opened."""
        if not self._owns_results:
            return 0
        known = {r["id"] for r in self._query("SELECT id FROM jobs")}
        removed = 0
        for child in self.results_dir.iterdir():
            if child.is_dir() and _is_uuid(child.name) and child.name not in known:
                shutil.rmtree(child, ignore_errors=True)
                removed += 1
        return removed


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_NEW_COLUMNS = {  # columns added since schema version 1 (additive: older databases get them on open)
    "jobs": {"crashes": "INTEGER NOT NULL DEFAULT 0", "denoising_started_at": "REAL"},
    "images": {"sha256": "TEXT"},
}


def _add_missing_columns(db: sqlite3.Connection) -> None:
    for table, columns in _NEW_COLUMNS.items():
        have = {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
