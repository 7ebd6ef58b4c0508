"""Storage for the feedback app: engine set-up, migrations and a group-commit writer; the tables
are in ``schema`` and re-exported here (``db.users``, ``db.items``, ...).

- SQLite (default, a file) or PostgreSQL (by URL) with the same schema; the schema is created and
  upgraded by the alembic migrations shipped in ``rlhfkit/feedback/migrations`` (applied at start).
- Durability: SQLite runs in WAL mode with ``synchronous=FULL``, so a committed transaction is on
  disk (the WAL is fsynced at every commit); the app acknowledges a write only after its commit.
- Throughput: every write goes through one :class:`GroupCommitWriter` that runs all jobs
  waiting in its queue inside one transaction (each job in its own SAVEPOINT, so one failing job
  does not undo the others) and commits once: one fsync for many labels ("group commit", as in
  PostgreSQL's ``commit_delay``). One writer per process also makes queue assignment race-free
  inside a process; ``BEGIN IMMEDIATE`` (SQLite) and conditional updates plus unique constraints
  (both back ends) keep it race-free across processes.
- PostgreSQL: durability is the server's WAL flush at COMMIT (``synchronous_commit=on``, the
  default); the same group commit applies (one COMMIT per batch). Isolation is the default READ
  COMMITTED: every state change in ``queue`` is a conditional UPDATE checked by its row count, so
  several server processes (``--workers``) stay race-free; a job that hits a deadlock or a
  serialization failure between processes is retried from its SAVEPOINT.
- The hot path's raw SQL (``raw``) is written once with ``:name`` parameters and only portable
  syntax (no ``INSERT OR ...``, booleans passed as parameters, ``RETURNING`` which both have).
- Timestamps are UNIX seconds (float), identical on both back ends.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url

from .schema import (
    assignments,
    items,
    labels,
    login_throttle,
    metadata,
    project_members,
    projects,
    sessions,
    users,
)

__all__ = [
    "metadata",
    "users",
    "sessions",
    "projects",
    "items",
    "assignments",
    "labels",
    "login_throttle",
    "project_members",
    "make_engine",
    "upgrade",
    "GroupCommitWriter",
    "Store",
    "default_db_url",
    "sqlite_file",
    "require_store_file",
    "MIGRATIONS_DIR",
]

log = logging.getLogger("rlhfkit.feedback")
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


# ----------------------------------------------------------------------------- engine
def default_db_url(path: str | Path = "feedback.db") -> str:
    return f"sqlite:///{Path(path).resolve()}"


def sqlite_file(url: str | Path) -> Path | None:
    """The file a SQLite store lives in: a bare path (as :class:`Store` reads one) or the file of a
    ``sqlite:///`` URL. None for what is not a file: another back end's URL (postgresql://...),
    an in-memory database, a ``file:`` URI, or a URL SQLAlchemy cannot parse."""
    url = str(url)
    if "://" not in url:
        return Path(url)
    try:
        u = make_url(url)
    except Exception:  # noqa: BLE001 - not ours to judge: the engine reports it
        return None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" or u.database.startswith("file:"):
        return None
    return Path(u.database)


def require_store_file(url: str | Path) -> None:
    """For commands that only read a store: a SQLite path that is not there is an error naming
    it (``FileNotFoundError``), since opening it would create an empty database and the command
    would then report a missing project instead. URLs of other back ends are not files."""
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"field 'db': no feedback store at {path} (the SQLite file does not exist)")


def make_engine(url: str, **kwargs) -> Engine:
    """An engine for ``url``. SQLite gets WAL, ``synchronous=FULL``, foreign keys and a busy
    timeout on every connection, and real ``BEGIN`` statements (pysqlite's own implicit
    transactions would break SAVEPOINTs; recipe from the SQLAlchemy SQLite dialect docs).
    A connection whose ``info["immediate"]`` is set begins with ``BEGIN IMMEDIATE`` (takes the
    write lock up front, so two processes never deadlock upgrading a read lock)."""
    url = str(url)
    if "://" not in url:  # a bare path
        url = default_db_url(url)
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
    engine = create_engine(url, **kwargs)
    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # autocommit at the driver; we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            if ":memory:" not in url and url not in ("sqlite://", "sqlite:///"):
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("immediate") else "BEGIN")

    return engine


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the shipped alembic migrations up to ``revision``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.connect() as conn:
        conn.info["immediate"] = True
        with conn.begin():
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        conn.info.pop("immediate", None)


# ----------------------------------------------------------------------------- writer
_RETRIES = 3
_RETRY_STATES = ("40P01", "40001")  # PostgreSQL: deadlock_detected, serialization_failure


def _sqlstate(e: BaseException) -> str | None:
    """The SQLSTATE of a driver error (raw psycopg, or wrapped by SQLAlchemy), else None."""
    return getattr(getattr(e, "orig", None), "sqlstate", None) or getattr(e, "sqlstate", None)


class GroupCommitWriter:
    """Runs write jobs ``fn(conn) -> result`` with group commit, on one connection.

    In the server, jobs run on the event loop: a writer task takes every job waiting in its queue
    (up to ``max_batch``), runs each inside a SAVEPOINT of one transaction (a failing job is
    rolled back alone and gets its own exception), then COMMITs -- one fsync for the whole batch,
    run in a worker thread so the loop keeps reading requests meanwhile -- and only then resolves
    the jobs' futures: an acknowledged write is durable. Doing the (short, CPU-bound) jobs on the
    loop itself avoids handing the GIL back and forth between a writer thread and the loop at
    every statement, which costs more than the statements.

    ``run(fn)`` (synchronous) sends the job to that loop when one is running in another thread,
    else runs it directly in its own transaction (command line, tests, start-up)."""

    def __init__(self, engine: Engine, max_batch: int = 256) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.batches = 0
        self.jobs = 0
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # one batch at a time on the connection
        self._loop = None
        self._queue = None
        self._task = None
        self._closed = False

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self.engine.connect()
            self._conn.info["immediate"] = True
        if self._conn.in_transaction():  # left over by a loop that stopped mid-batch
            self._conn.rollback()
        return self._conn

    def _exec_jobs(self, conn: Connection, fns: list) -> list[tuple[bool, Any]]:
        # One SAVEPOINT per job, issued on the driver connection (SQLAlchemy's begin_nested costs
        # ~10x more and the jobs never nest their own savepoints). On PostgreSQL a failed statement
        # aborts the transaction until ROLLBACK TO SAVEPOINT, which also undoes only this job.
        # On PostgreSQL every statement is a round trip to the server process, so the savepoint
        # bookkeeping between two jobs goes as one parameterless multi-statement query.
        multi = conn.dialect.name == "postgresql"
        results: list[tuple[bool, Any]] = []
        held = False  # a released-pending savepoint of the previous successful job
        for fn in fns:
            for attempt in range(1 + _RETRIES):
                if held and multi:
                    _plain(conn, "RELEASE SAVEPOINT fb_job; SAVEPOINT fb_job")
                else:
                    if held:
                        raw(conn, "RELEASE SAVEPOINT fb_job")
                    raw(conn, "SAVEPOINT fb_job")
                held = False
                try:
                    value = fn(conn)
                except Exception as e:  # noqa: BLE001 - the job's error goes to its caller
                    if multi:
                        _plain(conn, "ROLLBACK TO SAVEPOINT fb_job; RELEASE SAVEPOINT fb_job")
                    else:
                        raw(conn, "ROLLBACK TO SAVEPOINT fb_job")
                        raw(conn, "RELEASE SAVEPOINT fb_job")
                    if attempt < _RETRIES and _sqlstate(e) in _RETRY_STATES:
                        continue  # lost a deadlock / serialization race with another process: again
                    results.append((False, e))
                else:
                    held = True
                    results.append((True, value))
                break
        if held:
            raw(conn, "RELEASE SAVEPOINT fb_job")
        return results

    # ------------------------------------------------------------------ async (server)
    async def submit(self, fn: Callable[[Connection], Any]) -> Any:
        if self._closed:
            raise RuntimeError("writer is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._run())
        fut = loop.create_future()
        self._queue.put_nowait((fn, fut))
        return await fut

    async def _run(self) -> None:
        q = self._queue
        while True:
            batch = [await q.get()]
            while len(batch) < self.max_batch and not q.empty():
                batch.append(q.get_nowait())
            batch = [(fn, fut) for fn, fut in batch if not fut.cancelled()]
            if not batch:
                continue
            with self._lock:
                conn = self._connection()
                try:
                    trans = conn.begin()
                    results = self._exec_jobs(conn, [fn for fn, _ in batch])
                    await asyncio.to_thread(trans.commit)  # the fsync, off the event loop
                except Exception as e:  # noqa: BLE001 - the COMMIT failed: nobody's write happened
                    log.exception("feedback writer: commit failed")
                    self._reset()
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
            self.batches += 1
            self.jobs += len(batch)
            for (_, fut), (ok, value) in zip(batch, results):
                if not fut.done():
                    fut.set_result(value) if ok else fut.set_exception(value)

    def _reset(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        finally:
            self._conn = None

    # ------------------------------------------------------------------ sync
    def run(self, fn: Callable[[Connection], Any], timeout: float | None = 60) -> Any:
        """Run ``fn`` as a write job and return its committed result (re-raises its error)."""
        loop = self._loop
        if loop is not None and loop.is_running() and not loop.is_closed():
            try:
                current = asyncio.get_running_loop()
            except RuntimeError:
                current = None
            if current is loop:
                raise RuntimeError("inside the event loop use `await store.awrite(fn)`")
            return asyncio.run_coroutine_threadsafe(self.submit(fn), loop).result(timeout)
        with self._lock:
            conn = self._connection()
            try:
                with conn.begin():
                    ((ok, value),) = self._exec_jobs(conn, [fn])
            except Exception:
                self._reset()
                raise
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self._closed = True
        if self._task is not None and self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._task.cancel)
            except RuntimeError:
                pass
        with self._lock:
            self._reset()


class Store:
    """Engine + migrations + writer: what the app holds. ``read()`` gives a connection for
    reads (use as a context manager); ``write(fn)`` / ``await awrite(fn)`` run ``fn(conn)`` in the
    writer and return its committed result."""

    def __init__(self, url: str | Path, *, migrate: bool = True, max_batch: int = 256) -> None:
        url = str(url)
        if "://" not in url:
            url = default_db_url(url)
        self.url = url
        self.engine = make_engine(url)
        if migrate:
            upgrade(self.engine)
        self.writer = GroupCommitWriter(self.engine, max_batch=max_batch)
        self._local = threading.local()
        self._lookup_conns: list = []  # every thread's kept-open reader, closed by close()

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def read(self) -> Connection:
        return self.engine.connect()

    def lookup(self, sql: str, params: dict) -> tuple | None:
        """One row of a tiny read on this thread's own DB-API connection (kept open; no pool
        checkout, no SQLAlchemy layer): the per-request session check."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self.engine.raw_connection()
            if not self.is_sqlite:
                # one round trip per check: no BEGIN / ROLLBACK around a single SELECT
                c.driver_connection.autocommit = True
            c.detach()  # ours for good: never handed back to the pool (with changed settings)
            self._local.conn = c
            self._lookup_conns.append(c)
        style = "named" if self.is_sqlite else self.engine.dialect.paramstyle
        cur = c.cursor()
        try:
            cur.execute(_convert(sql, style), params)
            row = cur.fetchone()
        finally:
            cur.close()
        return row

    def write(self, fn: Callable[[Connection], Any], timeout: float | None = 60) -> Any:
        return self.writer.run(fn, timeout)

    async def awrite(self, fn: Callable[[Connection], Any]) -> Any:
        return await self.writer.submit(fn)

    def close(self) -> None:
        self.writer.close()
        for c in self._lookup_conns:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
        self._lookup_conns.clear()
        self._local = threading.local()
        self.engine.dispose()


def now() -> float:
    return time.time()


# ----------------------------------------------------------------------------- raw SQL
# The label-submission path runs about ten tiny statements per label; through SQLAlchemy's
# execution layer each costs ~10x what SQLite needs for it. ``raw`` runs plain SQL (written once
# with :name parameters, valid on SQLite and PostgreSQL) on the DB-API connection under ``conn``,
# inside the same transaction / savepoint.
_PARAM = re.compile(r"(?<![:\w]):(\w+)")


@functools.lru_cache(maxsize=256)
def _convert(sql: str, style: str) -> str:
    if style in ("pyformat", "format"):  # psycopg: %(name)s
        return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))
    return sql  # sqlite3 and other "named" drivers take :name


def raw(conn: Connection, sql: str, params: dict | None = None):
    """Execute ``sql`` on the DB-API connection of ``conn``; returns the DB-API cursor."""
    dbapi_conn = conn.connection.driver_connection
    style = "named" if conn.dialect.name == "sqlite" else conn.dialect.paramstyle
    cur = dbapi_conn.cursor()
    cur.execute(_convert(sql, style), params or {})
    return cur


def _plain(conn: Connection, sql: str) -> None:
    """Run parameterless SQL (several statements allowed on PostgreSQL: one round trip)."""
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.execute(sql)
    finally:
        cur.close()


def from_json(v: Any, decoded: bool = False) -> Any:
    """A JSON column value read by ``raw``: text on SQLite, already decoded by the PostgreSQL
    drivers (pass ``decoded=json_decoded(conn)``: a JSON *string* value such as a gold answer
    ``"first"`` arrives as a Python str there and must not be parsed again)."""
    if decoded or v is None:
        return v
    return json.loads(v) if isinstance(v, (str, bytes)) else v


def json_decoded(conn: Connection) -> bool:
    """Whether the driver under ``conn`` returns JSON columns already decoded (PostgreSQL)."""
    return conn.dialect.name == "postgresql"


def to_json(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))
