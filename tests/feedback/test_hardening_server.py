"""Hostile clients against a real `rlhfkit feedback serve` process on loopback: oversized bodies,
parallel password guessing, a restart, forged X-Forwarded-For, huge user names, deactivation.

What is measured is what a client or an operator can observe: the server process's resident
memory and CPU time (psutil), the status codes, and the rows in the store."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest
from sqlalchemy import insert, select

from rlhfkit.feedback import db
from rlhfkit.feedback.auth import create_user

from .conftest import BOTH_BACKENDS, free_port, lab_hash

psutil = pytest.importorskip("psutil")

ADMIN_PW = "admin-password"
LAB_PW = "labeler-password"
MB = 1_000_000


def _setup(path, labelers=("cat", "bob")) -> None:
    store = db.Store(str(path))
    try:
        store.write(lambda c: create_user(c, "admin", ADMIN_PW, "admin"))

        def job(c):
            for n in labelers:
                c.execute(
                    insert(db.users).values(
                        username=n, password_hash=lab_hash(), role="labeler", active=True, created_at=time.time()
                    )
                )

        store.write(job)
    finally:
        store.close()


@contextmanager
def served(path, *args, env=None, log_path=None):
    """A `rlhfkit feedback serve` process on a free port: yields (port, Popen). ``path``: a SQLite
    file or a database URL (then give ``log_path`` for the server's stderr)."""
    port = free_port()
    log_path = log_path or f"{path}.server.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlhfkit.cli",
            "feedback",
            "serve",
            "--db",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
        env=None if env is None else {**os.environ, **env},
    )
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}: {open(log_path).read()[-2000:]}")
            try:
                if request(port, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("server did not come up")
            time.sleep(0.1)
        yield port, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def request(port, method, path, body=None, headers=None, timeout=60):
    """(status, headers, parsed JSON body or None) of one request on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        h = {"Content-Type": "application/json"} if data is not None and not isinstance(body, bytes) else {}
        conn.request(method, path, body=data, headers={**h, **(headers or {})})
        r = conn.getresponse()
        raw = r.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw
        return r.status, dict(r.getheaders()), parsed
    finally:
        conn.close()


def login(port, username, password, headers=None) -> int:
    return request(port, "POST", "/api/auth/login", {"username": username, "password": password}, headers)[0]


def bearer(port, username, password) -> dict:
    status, _, body = request(port, "POST", "/api/auth/login", {"username": username, "password": password})
    assert status == 200, body
    return {"Authorization": f"Bearer {body['token']}"}


def _rss(proc) -> int:
    return psutil.Process(proc.pid).memory_info().rss


class PeakRSS:
    """Samples a process's resident memory every 5 ms in a thread; ``peak`` is the largest seen."""

    def __init__(self, proc):
        self.p = psutil.Process(proc.pid)
        self.peak = self.p.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.p.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _send_big(port, path, total, chunked, time_limit=60.0) -> int | None:
    """Send a ``total``-byte anonymous POST body (Content-Length, or chunked without one) while a
    second thread reads the reply; returns the reply's status (None: none came)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(time_limit)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {total}\r\n\r\n"
    reply = bytearray()

    def reader():
        try:
            while b"\r\n" not in reply:
                d = s.recv(65536)
                if not d:
                    return
                reply.extend(d)
        except OSError:
            pass

    t = threading.Thread(target=reader, daemon=True)
    try:
        s.sendall(head.encode())
        t.start()
        chunk, sent, t0 = b"7" * (1 << 20), 0, time.time()
        try:
            while sent < total and time.time() - t0 < time_limit:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
            if chunked:
                s.sendall(b"0\r\n\r\n")
        except OSError:  # the server may close once it has answered
            pass
        t.join(time_limit)
    finally:
        s.close()
    line = bytes(reply).split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 else None


# ----------------------------------------------------------------------------- 1. body limits
def test_oversized_bodies_are_refused_before_they_are_read(tmp_path):
    """An anonymous 200 MB body, with Content-Length or chunked, is answered 413 and the server's
    resident memory stays within 50 MB of idle; /healthz keeps answering meanwhile."""
    path = tmp_path / "f.db"
    _setup(path)
    with served(path) as (port, proc):
        for _ in range(20):  # warm: imports, thread pool, the first 401s
            request(port, "GET", "/healthz")
            assert request(port, "POST", "/api/tasks/1/label", {"choice": "A"})[0] == 401
        idle = _rss(proc)
        slowest = [0.0]
        stop = threading.Event()

        def probe():  # a labeler's view of the server while the bodies arrive
            while not stop.is_set():
                t0 = time.perf_counter()
                request(port, "GET", "/healthz")
                slowest[0] = max(slowest[0], time.perf_counter() - t0)
                time.sleep(0.02)

        prober = threading.Thread(target=probe, daemon=True)
        with PeakRSS(proc) as rss:
            prober.start()
            statuses = [_send_big(port, "/api/tasks/1/label", 200 * MB, chunked) for chunked in (False, True)]
            time.sleep(0.2)
            stop.set()
            prober.join()
        print(
            f"\nRSS idle {idle / 2**20:.1f} MiB, peak under 200 MB bodies {rss.peak / 2**20:.1f} MiB "
            f"(+{(rss.peak - idle) / 2**20:.1f} MiB); slowest /healthz {slowest[0] * 1000:.0f} ms"
        )
        assert statuses == [413, 413]
        assert rss.peak - idle < 50 * 2**20
        assert slowest[0] < 1.0
        # a body just under the limit still gets through to the route (and its 401)
        assert (
            request(
                port,
                "POST",
                "/api/tasks/1/label",
                b"{" + b" " * (MB - 100) + b"}",
                {"Content-Type": "application/json"},
            )[0]
            == 401
        )


def test_import_limit_is_its_own(tmp_path):
    """The file import takes bodies up to --max_import_mb (413 above); JSON requests stay at 1 MB."""
    path = tmp_path / "f.db"
    _setup(path)
    with served(path, "--max_import_mb", "2") as (port, _proc):
        admin = bearer(port, "admin", ADMIN_PW)
        status, _, proj = request(port, "POST", "/api/admin/projects", {"name": "t", "task_type": "thumbs"}, admin)
        assert status == 201

        def line(i):  # distinct items (an import drops exact duplicates), about 1 kB each
            return json.dumps({"prompt": f"{i} " + "p" * 1000, "completion": "c"}) + "\n"

        def upload(n_lines):
            boundary = "xyzBOUNDARYxyz"
            body = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="items.jsonl"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n"
                ).encode()
                + "".join(map(line, range(n_lines))).encode()
                + f"\r\n--{boundary}--\r\n".encode()
            )
            return request(
                port,
                "POST",
                f"/api/admin/projects/{proj['id']}/import",
                body,
                {**admin, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            )

        status, _, res = upload(1500)  # 1.5 MB: over the JSON limit, under the import limit
        assert status == 200 and res["imported"] == 1500
        status, headers, _ = upload(2500)  # 2.5 MB
        assert status == 413 and headers.get("x-content-type-options") == "nosniff"
        big_json = {"items": [{"prompt": "p" * 1000, "completion": "c"}] * 1500}  # 1.5 MB of JSON
        assert request(port, "POST", f"/api/admin/projects/{proj['id']}/items", big_json, admin)[0] == 413


# ----------------------------------------------------------------------------- 2. log-in throttle
def _slow_scrypt_hash(password: str) -> str:
    """A hash in the app's scrypt format with p=4: ~4x the work of one scrypt block (~0.2 s here).
    The app verifies scrypt hashes (older ones are upgraded at log-in), so the same user works on
    any version of the server."""
    import base64
    import hashlib

    salt = b"fixed-test-salt!"
    key = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=4, dklen=32)
    return f"scrypt$16384$8$4${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def test_forty_parallel_guesses_check_at_most_five_passwords(tmp_path):
    """40 wrong guesses at once for one user from one address: at most 5 passwords are checked.

    Shown three ways, none of them a hook in the server: (1) a 401 is only ever the answer of a
    password check, and at most 5 come back (the rest are 429); (2) the store counted 5 attempts;
    (3) the server's CPU time: the user's hash is made expensive on purpose (scrypt with p=4,
    ~0.2 s a check), so each check shows as its cost in the process's CPU time, measured against
    40 refused requests sent afterwards. (3) is an estimate: checks running side by side on a busy
    machine each cost more CPU than one alone, so it only has to stay far below the 33 checks
    that a count-after-check limiter let through; (1) and (2) are exact."""
    import hashlib

    path = tmp_path / "f.db"
    _setup(path)
    slow_hash = _slow_scrypt_hash("the-real-password")
    store = db.Store(str(path))
    store.write(
        lambda c: c.execute(
            insert(db.users).values(
                username="target", password_hash=slow_hash, role="labeler", active=True, created_at=time.time()
            )
        )
    )
    store.close()
    costs = []
    for _ in range(3):  # the cost of one check, here, in CPU seconds
        t0 = time.process_time()
        hashlib.scrypt(b"wrong guess", salt=b"fixed-test-salt!", n=2**14, r=8, p=4, dklen=32)
        costs.append(time.process_time() - t0)
    cost = min(costs)

    with served(path) as (port, proc):
        assert login(port, "bob", "warm-up wrong") == 401  # thread pool and argon2 warm
        ps = psutil.Process(proc.pid)

        def cpu():
            t = ps.cpu_times()
            return t.user + t.system

        def burst():
            barrier = threading.Barrier(40)
            statuses = [None] * 40

            def guess(i):
                barrier.wait()
                statuses[i] = login(port, "target", f"guess-{i}")

            threads = [threading.Thread(target=guess, args=(i,)) for i in range(40)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            return statuses

        c0 = cpu()
        first = burst()
        c1 = cpu()
        second = burst()  # all refused: the cost of 40 requests without a check
        c2 = cpu()
    checks = ((c1 - c0) - (c2 - c1)) / cost
    print(
        f"\n40 parallel guesses: {first.count(401)} x 401, {first.count(429)} x 429; "
        f"server CPU {c1 - c0:.2f} s vs {c2 - c1:.2f} s for 40 refusals; one check {cost:.3f} s "
        f"-> {checks:.2f} checks"
    )
    assert first.count(401) <= 5 and first.count(401) + first.count(429) == 40
    assert second.count(429) == 40
    # 13 ~ the geometric middle of 5 (the limit) and 33 (what a count-after-check limiter let
    # through): five checks side by side on a shared 2-core machine measured 7.50 once in CI, so
    # a bound near 5 fails on noise while a regression to 33 still fails here by a wide margin.
    assert checks < 13
    from rlhfkit.feedback.auth import _bucket

    store = db.Store(str(path))
    try:
        with store.read() as c:
            hits = c.execute(
                select(db.login_throttle.c.hits).where(
                    db.login_throttle.c.key == _bucket("user-address", "target", "127.0.0.1")
                )
            ).scalar()
    finally:
        store.close()
    assert hits == first.count(401) == 5


def test_throttle_survives_a_restart(tmp_path):
    """Failed log-ins are counted in the store: a restart does not give a guesser a new window."""
    path = tmp_path / "f.db"
    _setup(path)
    with served(path) as (port, _):
        assert [login(port, "cat", f"wrong-{i}") for i in range(5)] == [401] * 5
        assert login(port, "cat", LAB_PW) == 429
    with served(path) as (port, _):
        status, headers, _ = request(port, "POST", "/api/auth/login", {"username": "cat", "password": LAB_PW})
        assert status == 429 and int(headers["retry-after"]) > 200


def test_forwarded_for_is_believed_only_from_trusted_proxies(tmp_path):
    """From loopback without --trusted_proxies, X-Forwarded-For is ignored: 20 failed log-ins from
    one address (20 different names, each with a made-up forwarded address) fill that address's
    bucket. With --trusted_proxies 127.0.0.1 the header names the client."""

    def twenty_one(port):
        return [login(port, f"nobody{i}", "wrong", {"X-Forwarded-For": f"203.0.113.{i + 1}"}) for i in range(21)]

    path = tmp_path / "a.db"
    _setup(path)
    with served(path) as (port, _):
        got = twenty_one(port)
    assert got == [401] * 20 + [429]
    path = tmp_path / "b.db"
    _setup(path)
    with served(path, "--trusted_proxies", "127.0.0.1") as (port, _):
        got = twenty_one(port)
    assert got == [401] * 21


def test_huge_user_names_cost_no_memory(tmp_path):
    """Failed log-ins with ~1 MB user names leave nothing of the names behind: the server's memory
    does not grow with them and the store keeps 64-character hashed keys."""
    path = tmp_path / "f.db"
    _setup(path)
    # a fixed mmap threshold: freed big blocks go back to the system at once, so the resident size
    # follows what is still referenced (glibc would otherwise keep some as heap, growing RSS by chance)
    with served(path, env={"MALLOC_MMAP_THRESHOLD_": "131072"}) as (port, proc):
        for i in range(2):
            assert login(port, f"{i}" * 990_000, "wrong") == 401
        idle = _rss(proc)
        for i in range(18):
            assert login(port, chr(ord("a") + i) * 990_000, "wrong") == 401
        grown = _rss(proc) - idle
    print(f"\n18 failed log-ins with 0.99 MB names: RSS {grown / 2**20:+.1f} MiB")
    assert grown < 8 * 2**20
    store = db.Store(str(path))
    try:
        with store.read() as c:
            keys = c.execute(select(db.login_throttle.c.key)).scalars().all()
    finally:
        store.close()
    assert keys and {len(k) for k in keys} == {64}


# ----------------------------------------------------------------------------- 4. deactivation
def test_deactivated_users_sessions_end_at_once(tmp_path):
    """`feedback set-user --active false` on the store of a running server, and the admin API's
    PATCH, end the user's sessions: their very next request answers 401 and their open task goes
    back to the queue."""
    path = tmp_path / "f.db"
    _setup(path)
    with served(path) as (port, _):
        admin = bearer(port, "admin", ADMIN_PW)
        status, _, proj = request(port, "POST", "/api/admin/projects", {"name": "t", "task_type": "thumbs"}, admin)
        request(
            port,
            "POST",
            f"/api/admin/projects/{proj['id']}/items",
            {"items": [{"prompt": "p", "completion": "c"}]},
            admin,
        )
        cat, bob = bearer(port, "cat", LAB_PW), bearer(port, "bob", LAB_PW)
        status, _, task = request(port, "POST", "/api/tasks/next", headers=cat)
        assert status == 200 and request(port, "GET", "/api/me", headers=cat)[0] == 200
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "rlhfkit.cli",
                "feedback",
                "set-user",
                "--db",
                str(path),
                "--username",
                "cat",
                "--active",
                "false",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert request(port, "GET", "/api/me", headers=cat)[0] == 401
        assert request(port, "POST", f"/api/tasks/{task['task_id']}/label", {"label": True}, cat)[0] == 401
        assert login(port, "cat", LAB_PW) == 401
        # cat's task went back to the queue: bob gets it
        status, _, t2 = request(port, "POST", "/api/tasks/next", headers=bob)
        assert status == 200 and t2["prompt"] == "p"
        # the same through the admin API
        users = {u["username"]: u["id"] for u in request(port, "GET", "/api/admin/users", headers=admin)[2]}
        assert request(port, "PATCH", f"/api/admin/users/{users['bob']}", {"active": False}, admin)[0] == 200
        assert request(port, "GET", "/api/me", headers=bob)[0] == 401


# ----------------------------------------------------------------------------- the import body
def _upload(data: bytes, name: str = "items.jsonl") -> tuple[bytes, dict]:
    """A multipart body holding ``data`` as the field ``file``, and its Content-Type header."""
    boundary = "xyzBOUNDARYxyz"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_a_gzip_upload_is_decompressed_only_up_to_the_import_limit(tmp_path):
    """A 20 KB gzip that expands to 20 MB, sent to a server whose import limit is 2 MB, answers
    413 naming the limit, and the server's resident memory stays within 20 MiB of idle
    (decompressed whole, the 20 million line breaks cost ~170 MiB as a list of lines before any
    item is read; a 50 MB gzip of one byte repeated expands to 50 GB). A gzip under the limit
    imports; a gzip inside a gzip is 422."""
    import gzip

    path = tmp_path / "f.db"
    _setup(path)
    lines = b"".join(
        b'{"prompt": "p%d", "completion": "c"}\n' % i for i in range(3)
    )  # distinct: duplicates are dropped
    bomb = gzip.compress(b"\n" * 20_000_000)
    assert len(bomb) < 30_000
    with served(path, "--max_import_mb", "2") as (port, proc):
        admin = bearer(port, "admin", ADMIN_PW)
        status, _, proj = request(port, "POST", "/api/admin/projects", {"name": "t", "task_type": "thumbs"}, admin)
        url = f"/api/admin/projects/{proj['id']}/import"
        body, ctype = _upload(gzip.compress(lines), "items.jsonl.gz")
        status, _, res = request(port, "POST", url, body, {**admin, **ctype})
        assert status == 200 and res["imported"] == 3, res  # also warms the import path
        idle = _rss(proc)
        body, ctype = _upload(bomb, "items.jsonl.gz")
        with PeakRSS(proc) as rss:
            status, _, res = request(port, "POST", url, body, {**admin, **ctype})
        print(f"\n20 KB gzip of 20 MB: {status}, RSS +{(rss.peak - idle) / 2**20:.1f} MiB")
        assert status == 413, res
        assert "import limit of 2 MB (--max_import_mb)" in res["detail"]["error"]
        assert (res["detail"]["field"], res["detail"]["imported"]) == ("file", 0)
        assert rss.peak - idle < 20 * 2**20
        body, ctype = _upload(gzip.compress(gzip.compress(lines)), "twice.jsonl.gz")
        status, _, res = request(port, "POST", url, body, {**admin, **ctype})
        assert status == 422 and "gzip file inside a gzip file" in res["detail"]["error"], res


def test_an_import_body_is_not_read_before_the_admin_check(tmp_path):
    """A 40 MB upload to either import route (API and admin page) from someone not signed in, or
    from a signed-in labeler, is answered 401 / a redirect to the log-in page / 403 without the
    server keeping it: the server process writes less than 1 MB meanwhile (psutil's write_chars,
    every write() it makes, temporary files included). An admin's upload of the same body is
    spooled to disk (at least 40 MB written): the measure sees an upload when there is one."""
    path = tmp_path / "f.db"
    _setup(path)
    data = b"not json\n" + (json.dumps({"prompt": "p" * 1000, "completion": "c"}) + "\n").encode() * 40_000
    body, ctype = _upload(data)
    with served(path) as (port, proc):
        admin = bearer(port, "admin", ADMIN_PW)
        status, _, proj = request(port, "POST", "/api/admin/projects", {"name": "t", "task_type": "thumbs"}, admin)
        cat = bearer(port, "cat", LAB_PW)
        ps = psutil.Process(proc.pid)
        routes = (f"/api/admin/projects/{proj['id']}/import", f"/admin/projects/{proj['id']}/import")

        def written_by(headers, route):
            before = ps.io_counters().write_chars
            status, _, _ = request(port, "POST", route, body, {**headers, **ctype}, timeout=120)
            return status, ps.io_counters().write_chars - before

        for route, anonymous in zip(routes, (401, 303)):
            for who, headers, want in (("anonymous", {}, anonymous), ("labeler", cat, 403)):
                status, written = written_by(headers, route)
                print(f"\n{who} 40 MB upload to {route}: {status}, server wrote {written / 1e6:.2f} MB")
                assert status == want and written < MB, (who, route, status, written)
        status, written = written_by(admin, routes[0])
        print(f"admin: {status}, server wrote {written / 1e6:.1f} MB")
        assert status == 422 and written >= 40 * MB


# ----------------------------------------------------------------------------- races with a second writer
def _waiting_on_a_lock(db_url: str, timeout: float = 30.0) -> bool:
    """Whether a PostgreSQL backend of this database waits on a lock (polls up to ``timeout``)."""
    from sqlalchemy import text

    engine = db.make_engine(db_url)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with engine.connect() as c:
                if c.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()"
                    )
                ).scalar():
                    return True
            time.sleep(0.05)
        return False
    finally:
        engine.dispose()


@contextmanager
def _second_writer(db_url: str):
    """A transaction of another process's writer on the store (``BEGIN IMMEDIATE`` on SQLite, as
    every writer of the app and the CLI): yields its connection; commits on leaving."""
    engine = db.make_engine(db_url)
    conn = engine.connect()
    conn.info["immediate"] = True
    try:
        with conn.begin():
            yield conn
    finally:
        conn.close()
        engine.dispose()


def _in_thread(fn):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("value", fn()), daemon=True)
    t.start()
    return t, out


@BOTH_BACKENDS
def test_a_claim_in_flight_when_its_labeler_is_deactivated_gets_no_task(db_url, backend, tmp_path):
    """A labeler's POST /api/tasks/next whose session was checked before a deactivation committed,
    but whose claim runs after it, gets no task (204): a deactivated labeler never holds one.
    The deactivation is `feedback set-user`'s transaction in another process, held open while
    the request arrives (SQLite: the server's writer waits for the write lock; PostgreSQL: its
    claim waits for the user row)."""
    from rlhfkit.feedback.auth import update_user

    _setup(db_url)
    with served(db_url, log_path=str(tmp_path / "server.log")) as (port, _):
        admin = bearer(port, "admin", ADMIN_PW)
        status, _, proj = request(port, "POST", "/api/admin/projects", {"name": "t", "task_type": "thumbs"}, admin)
        request(
            port,
            "POST",
            f"/api/admin/projects/{proj['id']}/items",
            {"items": [{"prompt": f"p{i}", "completion": "c"} for i in range(3)]},
            admin,
        )
        cat = bearer(port, "cat", LAB_PW)
        cat_id = {u["username"]: u["id"] for u in request(port, "GET", "/api/admin/users", headers=admin)[2]}["cat"]
        with _second_writer(db_url) as other:
            update_user(other, cat_id, active=False)
            claim, out = _in_thread(lambda: request(port, "POST", "/api/tasks/next", headers=cat))
            if backend == "postgresql":
                assert _waiting_on_a_lock(db_url)
            else:
                time.sleep(2.0)
            assert claim.is_alive()  # in flight: it waits for the deactivation's transaction
        claim.join(60)
        assert out["value"][0] == 204, out
    store = db.Store(db_url)
    try:
        with store.read() as c:
            held = c.execute(select(db.assignments.c.id).where(db.assignments.c.user_id == cat_id)).all()
    finally:
        store.close()
    assert held == []


@BOTH_BACKENDS
def test_two_admins_demoting_each_other_at_once_leave_one_admin(db_url, backend, tmp_path):
    """Admin ``a`` demotes ``admin`` in another process (a second server process, or `feedback
    set-user`) while ``admin``'s PATCH demoting ``a`` arrives: the PATCH waits for that
    transaction and then answers 409 (last admin), so one active admin remains."""
    from rlhfkit.feedback.auth import update_user

    _setup(db_url)
    store = db.Store(db_url)
    try:
        a_id = store.write(lambda c: create_user(c, "a", ADMIN_PW, "admin"))
    finally:
        store.close()
    with served(db_url, log_path=str(tmp_path / "server.log")) as (port, _):
        admin = bearer(port, "admin", ADMIN_PW)
        admin_id = request(port, "GET", "/api/me", headers=admin)[2]["id"]
        with _second_writer(db_url) as other:
            update_user(other, admin_id, role="labeler")  # a demotes admin
            patch, out = _in_thread(
                lambda: request(port, "PATCH", f"/api/admin/users/{a_id}", {"role": "labeler"}, admin)
            )
            if backend == "postgresql":
                assert _waiting_on_a_lock(db_url)
            else:
                time.sleep(2.0)
            assert patch.is_alive()
        patch.join(60)
        status, _, body = out["value"]
        assert status == 409 and "last active admin" in body["detail"], body
    store = db.Store(db_url)
    try:
        with store.read() as c:
            U = db.users
            active_admins = select(U.c.username).where(U.c.role == "admin", U.c.active == True)  # noqa: E712
            admins = c.execute(active_admins).scalars().all()
    finally:
        store.close()
    assert admins == ["a"]
