"""Run the feedback app with uvicorn: ``rlhfkit feedback serve --db URL --host H --port P``.

Migrations are applied before the server starts listening. One worker process by default: its
group-commit writer batches every label into few fsyncs, which is what SQLite needs (a second
process would only contend for the same write lock); PostgreSQL deployments may use ``--workers``
(the queue is race-free across processes there; note that every label also bumps its project's
``n_labels`` row, so writes of one project still serialise on that row lock).

uvicorn's own proxy-header handling is switched off: by default it believes ``X-Forwarded-For``
from 127.0.0.1, so anyone on the server's host could claim any address. The app reads the header
only from ``trusted_proxies`` (see ``app.create_app``).
"""

from __future__ import annotations

import os
import sys

import uvicorn

from .app import create_app
from .db import make_engine, upgrade

__all__ = ["serve"]


def serve(
    db_url: str = "feedback.db",
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    secure_cookies: bool = False,
    log_level: str = "warning",
    access_log: bool = False,
    lease_s: float | None = None,
    generator=None,
    redact: bool = False,
    trusted_proxies: list[str] | tuple[str, ...] = (),
    max_import_bytes: int | None = None,
) -> None:
    # The event loop and the group-commit writer share the GIL; a shorter switch interval (default
    # 5 ms) lets a finished commit hand its results back sooner (lower tail latency under load).
    sys.setswitchinterval(0.0005)
    engine = make_engine(db_url)
    upgrade(engine)
    is_sqlite = engine.dialect.name == "sqlite"
    engine.dispose()
    if workers > 1 and is_sqlite:
        print(
            "rlhfkit feedback: warning: several workers on SQLite only contend for its one write lock; "
            "use 1 (or PostgreSQL)",
            file=sys.stderr,
            flush=True,
        )
    extra = {} if lease_s is None else {"lease_s": lease_s if lease_s > 0 else None}
    if redact:
        extra["redact"] = True
    if trusted_proxies:
        extra["trusted_proxies"] = list(trusted_proxies)
    if max_import_bytes is not None:
        extra["max_import_bytes"] = int(max_import_bytes)
    if workers > 1:
        if generator is not None:
            raise ValueError("live generation (a generator) needs a single worker process")
        os.environ["RLHFKIT_FEEDBACK_DB"] = db_url
        os.environ["RLHFKIT_FEEDBACK_SECURE"] = "1" if secure_cookies else "0"
        if lease_s is not None:
            os.environ["RLHFKIT_FEEDBACK_LEASE_S"] = str(lease_s)
        os.environ["RLHFKIT_FEEDBACK_REDACT"] = "1" if redact else "0"
        os.environ["RLHFKIT_FEEDBACK_TRUSTED_PROXIES"] = ",".join(trusted_proxies)
        os.environ["RLHFKIT_FEEDBACK_MAX_IMPORT_BYTES"] = "" if max_import_bytes is None else str(int(max_import_bytes))
        uvicorn.run(
            "rlhfkit.feedback.server:_app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            access_log=access_log,
            proxy_headers=False,
        )
        return
    app = create_app(db_url, secure_cookies=secure_cookies, generator=generator, **extra)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log, proxy_headers=False)


def _app_from_env():
    extra = {}
    if os.environ.get("RLHFKIT_FEEDBACK_LEASE_S"):
        lease_s = float(os.environ["RLHFKIT_FEEDBACK_LEASE_S"])
        extra["lease_s"] = lease_s if lease_s > 0 else None
    proxies = [h for h in os.environ.get("RLHFKIT_FEEDBACK_TRUSTED_PROXIES", "").split(",") if h]
    if proxies:
        extra["trusted_proxies"] = proxies
    if os.environ.get("RLHFKIT_FEEDBACK_MAX_IMPORT_BYTES"):
        extra["max_import_bytes"] = int(os.environ["RLHFKIT_FEEDBACK_MAX_IMPORT_BYTES"])
    return create_app(
        os.environ["RLHFKIT_FEEDBACK_DB"],
        secure_cookies=os.environ.get("RLHFKIT_FEEDBACK_SECURE") == "1",
        redact=os.environ.get("RLHFKIT_FEEDBACK_REDACT") == "1",
        **extra,
    )
