"""A throwaway PostgreSQL cluster for tests and benchmarks: ``initdb`` into a temporary folder,
``pg_ctl start`` on a free port with its unix socket in that folder, databases created on
demand, ``stop()`` deletes everything.

Uses the server binaries of the Debian/Ubuntu ``postgresql`` package
(``/usr/lib/postgresql/<version>/bin``) or whatever ``initdb`` / ``pg_ctl`` are on ``PATH``
(``$RLHFKIT_PG_BIN`` overrides). PostgreSQL refuses to run as root, so as root the cluster is
owned by and run as the ``postgres`` OS user (``runuser -u postgres --``); as anyone else it runs
as that user. Authentication is ``trust`` on the socket and on 127.0.0.1 only: a throwaway,
never a deployment. Durability settings are the server's defaults (``fsync=on``,
``synchronous_commit=on``): a COMMIT returns after its WAL is flushed, which is what the
benchmark measures.

    with TempPostgres() as pg:
        url = pg.create_database("feedback")   # postgresql+psycopg://postgres@/feedback?host=...&port=...
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["TempPostgres", "find_pg_bin", "unavailable_reason"]


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (newest Debian version first), or None."""
    env = os.environ.get("RLHFKIT_PG_BIN")
    cands = [env] if env else []
    cands += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    which = shutil.which("initdb")
    if which:
        cands.append(str(Path(which).parent))
    for c in cands:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def _run_as_prefix() -> list[str] | None:
    """Command prefix to run the server as a non-root user ([] when we are not root); None when
    we are root and there is no ``postgres`` user or no way to switch to it."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam("postgres")
    except (KeyError, ImportError):
        return None
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    if shutil.which("setpriv"):
        return None  # would need the uid/gid spelled out; runuser is in util-linux with setpriv anyway
    return None


def unavailable_reason() -> str | None:
    """None when a throwaway cluster can be started here, else why not (for a pytest skip)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the PostgreSQL driver psycopg is not installed (pip install 'psycopg[binary]')"
    if find_pg_bin() is None:
        return (
            "no PostgreSQL server binaries (initdb, pg_ctl) found under /usr/lib/postgresql/*/bin or on PATH "
            "(Debian: apt-get install postgresql)"
        )
    if _run_as_prefix() is None:
        return "running as root without a 'postgres' OS user and runuser (PostgreSQL refuses to run as root)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempPostgres:
    """A PostgreSQL cluster in a temporary folder (see the module docstring). ``start()`` returns
    self; ``url(dbname)`` / ``create_database(name)`` give ``postgresql+psycopg://`` URLs over the
    unix socket; ``stop()`` shuts the server down and deletes the folder (also at interpreter
    exit, if forgotten)."""

    def __init__(
        self, base_dir: str | None = None, port: int | None = None, settings: dict[str, str] | None = None
    ) -> None:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.bin = find_pg_bin()
        self.prefix = _run_as_prefix() or []
        # not under pytest's 0700 per-user folders: the postgres user must be able to reach it
        self.dir = Path(tempfile.mkdtemp(prefix="rlhfkit-pg-", dir=base_dir))
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.log = self.dir / "server.log"
        self.port = port or _free_port()
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.sock),
            "max_connections": "200",
            "shared_buffers": "128MB",
            **(settings or {}),
        }
        self._started = False
        self._n_db = 0

    # ------------------------------------------------------------------ lifecycle
    def _pg(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [*self.prefix, str(self.bin / args[0]), *args[1:]]
        r = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, cwd=self.dir
        )
        if r.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{log}")
        return r

    def start(self) -> "TempPostgres":
        if self._started:
            return self
        self.sock.mkdir()
        if self.prefix:  # root: hand the folder to the postgres user
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(self.sock, "postgres", "postgres")
            os.chmod(self.dir, 0o755)
        self._pg(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-instructions",
            "--no-sync",
        )  # throwaway: skip initdb's fsyncs
        opts = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")
        self._started = True
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        if self._started:
            self._started = False
            try:
                self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop", timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "TempPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ databases
    def url(self, dbname: str = "postgres", driver: str = "psycopg") -> str:
        """SQLAlchemy URL of ``dbname`` over the unix socket."""
        return f"postgresql+{driver}://postgres@/{dbname}?host={self.sock}&port={self.port}"

    def connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(host=str(self.sock), port=self.port, user="postgres", dbname=dbname, autocommit=True)

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        if name is None:
            self._n_db += 1
            name = f"db{self._n_db}"
        with self.connect() as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self.connect() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
