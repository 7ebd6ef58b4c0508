"""The feedback web app: HTML pages for people and a JSON API under ``/api`` for scripts (OpenAPI
at ``/openapi.json``, docs at ``/docs``). ``create_app(db_url)`` builds it; ``server.serve`` runs it.

Auth: every request's session is looked up in the ``sessions`` table (token hash, expiry, active
user). Browsers hold the token in an HttpOnly cookie and must echo the session's CSRF token on
unsafe requests (form field ``csrf_token`` or header ``X-CSRF-Token``); scripts send
``Authorization: Bearer <token>`` from ``POST /api/auth/login`` (no CSRF: browsers never attach it
by themselves). Labelers only ever see their own tasks (someone else's task id answers 404);
``/api/admin/*`` and ``/admin*`` need the admin role (403).

Hardening (each limit answers before any work it guards):
- request bodies: FastAPI's own ``max_body_size`` (Starlette's ``RequestBodyLimitMiddleware``):
  a declared Content-Length over the limit is answered 413 before the body is read, a chunked
  body is counted as it streams and cut at the limit -- before the route parses it and before
  the session is looked up. 1 MB for everything but the file import (``max_import_bytes``);
- JSON bodies are parsed strictly (``http_hardening.strict_json``): NaN, Infinity, numbers past the float range
  and lone surrogates answer 422 naming the field, not a 500 later in the database or an export;
- log-ins: :class:`auth.LoginThrottle` (in the store; reserve before verifying);
- the client address is the socket peer; ``X-Forwarded-For`` is read only from the addresses in
  ``trusted_proxies`` (uvicorn's ``ProxyHeadersMiddleware``, which takes the right-most address
  not itself a trusted proxy);
- every response carries Content-Security-Policy, X-Frame-Options, X-Content-Type-Options and
  Referrer-Policy (``http_hardening.SecurityHeaders``);
- state changes only on unsafe methods: a task is claimed by ``POST /api/tasks/next``.

Writes go through the store's group-commit writer and are answered only after their commit.
"""
from __future__ import annotations

import contextlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Sequence

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, insert, select, update

from rlhfkit.data import DataError

from . import db
from .auth import (
    LoginLimits,
    LoginThrottle,
    Principal,
    Throttled,
    authenticate,
    create_session,
    create_user,
    delete_session,
    hash_password,
    lookup_session,
    needs_rehash,
    update_user,
    verify_password,
)
from .export import EXPORT_KINDS, LABELER_KEY_ENV, export_labels, labeler_key, redact_export
from .http_hardening import SecurityHeaders, StrictJSONRoute, escape_surrogates
from .queue import (
    DEFAULT_LEASE_S,
    Conflict,
    NotFound,
    add_items,
    get_task,
    may_label,
    next_task,
    release_open_tasks,
    skip_task,
    submit_label,
)
from .stats import overview, project_dashboard
from .tasks import FLAGS, TASK_TYPES, LabelError, drop_duplicate_items, parse_items, redact_items

__all__ = ["create_app", "COOKIE", "MAX_BODY_BYTES", "MAX_IMPORT_BYTES"]

HERE = Path(__file__).resolve().parent
COOKIE = "rlhf_session"
LOGIN_CSRF_COOKIE = "rlhf_login_csrf"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
MAX_BODY_BYTES = 1_000_000  # every JSON or form body (a verdict, a log-in, a batch of items)
MAX_IMPORT_BYTES = 50_000_000  # the JSONL file import (``feedback serve --max_import_mb``)
MAX_ID = 2**31 - 1  # ids are 32-bit integer columns on PostgreSQL
MAX_DURATION_MS = 2**31 - 1  # duration_ms is one too (~24.8 days)
Id = Annotated[int, PathParam(ge=1, le=MAX_ID)]


class _FeedbackApp(FastAPI):
    """FastAPI with :class:`SecurityHeaders` outside everything else, so that the responses of
    its own outer layers (the body limit's 413, the server-error 500) carry the headers too."""

    def build_middleware_stack(self):
        return SecurityHeaders(super().build_middleware_stack())



# ----------------------------------------------------------------------------- API models
class LoginIn(BaseModel):
    username: str
    password: str


class Verdict(BaseModel):
    """A verdict in screen terms (see ``rlhfkit.feedback.tasks``); give the fields of the task's type."""

    model_config = ConfigDict(strict=True, extra="forbid")
    choice: Literal["A", "B", "tie", "both_bad"] | None = Field(None, description="pairwise")
    strength: int | None = Field(None, description="pairwise: 1 slightly, 2 clearly, 3 much better")
    ranking: list[str] | None = Field(None, description="ranking: response keys, best first")
    ranks: list[int] | None = Field(None, description="ranking: rank per screen position, 0 best")
    rating: int | None = Field(None, description="rating: on the project's scale")
    flags: list[Literal["harmful", "untruthful", "off_topic"]] | None = Field(None, description="rating")
    label: bool | None = Field(None, description="thumbs: true = up")
    rewrite: str | None = Field(None, description="rewrite: the corrected response")
    duration_ms: int | None = Field(None, ge=0, le=MAX_DURATION_MS, description="time spent, measured by the client")


class ProjectIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    task_type: Literal["pairwise", "ranking", "rating", "thumbs", "rewrite"]
    instructions: str = ""
    overlap: int = Field(1, ge=1, le=100)
    gold_rate: float = Field(0.0, ge=0.0, le=1.0)
    scale_min: int = Field(1, ge=-1_000_000, le=1_000_000)
    scale_max: int = Field(7, ge=-1_000_000, le=1_000_000)


class ProjectPatch(BaseModel):
    instructions: str | None = None
    overlap: int | None = Field(None, ge=1, le=100)
    gold_rate: float | None = Field(None, ge=0.0, le=1.0)
    active: bool | None = None


class UserIn(BaseModel):
    username: str
    password: str
    role: Literal["admin", "labeler"] = "labeler"


class UserPatch(BaseModel):
    """Give only what changes. ``active: false`` ends the user's sessions at once and hands their
    open tasks back; a new ``password`` ends their sessions too."""

    model_config = ConfigDict(extra="forbid")
    active: bool | None = None
    role: Literal["admin", "labeler"] | None = None
    password: str | None = Field(None, min_length=8)


class PasswordChange(BaseModel):
    current_password: str
    new_password: str = Field(min_length=8)


class MembersIn(BaseModel):
    """The project's labelers by user name; an empty list opens the project to every labeler."""

    usernames: list[str] = Field(max_length=10_000)


class ItemsIn(BaseModel):
    items: list[dict[str, Any]]


class GenerateIn(BaseModel):
    prompts: list[str]
    n: int = Field(2, ge=1, le=26)


class _LoginRequired(Exception):
    pass


# ----------------------------------------------------------------------------- app
def create_app(db_url: str = "feedback.db", *, store: db.Store | None = None, secure_cookies: bool = False,
               session_ttl_s: float = 12 * 3600, login_limits: LoginLimits | None = None,
               generator: Callable | None = None, lease_s: float | None = DEFAULT_LEASE_S,
               clock: Callable[[], float] = time.time, redact: bool = False,
               trusted_proxies: Sequence[str] = (), max_body_bytes: int = MAX_BODY_BYTES,
               max_import_bytes: int = MAX_IMPORT_BYTES) -> FastAPI:
    """The app on the database at ``db_url`` (SQLite path or SQLAlchemy URL; migrations are applied).

    ``generator``: optional live-generation hook, ``generator(prompts, n) -> list[list[dict]]``
    (for each prompt, n responses ``{"text", "model"}``), used by ``POST
    /api/admin/projects/{id}/generate`` (see ``rlhfkit.feedback.generation``).

    ``lease_s``: an open task older than this may be reassigned to another labeler (None: never);
    ``clock``: the time source of the task queue (tests pass a controllable one);
    ``redact``: replace personal data (``rlhfkit.privacy``) in every import before labelers see
    it and in every API export (without it, a request's ``?redact=true`` asks for it);
    ``trusted_proxies``: addresses (or networks) of reverse proxies whose ``X-Forwarded-For`` names
    the client (else the socket peer is the client); ``max_body_bytes``: the largest request body
    (413 above), ``max_import_bytes`` that of the file import."""
    store = store or db.Store(db_url)
    redact_all = redact  # the endpoints' own ``redact`` is the request's
    throttle = LoginThrottle(login_limits)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        store.close()

    app = _FeedbackApp(title="rlhfkit feedback", version="1", lifespan=lifespan, max_body_size=max_body_bytes,
                       description="Human feedback collection: tasks, labels, projects, users, exports.")
    app.router.route_class = StrictJSONRoute  # before any route is added
    if trusted_proxies:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(trusted_proxies))
    app.state.store = store
    app.state.throttle = throttle
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # ------------------------------------------------------------------ auth dependencies
    def _principal(request: Request) -> Principal | None:
        if "principal" in request.scope:
            return request.scope["principal"]
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            token, via = auth[7:].strip(), "bearer"
        else:
            token, via = request.cookies.get(COOKIE, ""), "cookie"
        p = None
        if token:  # one indexed read on a kept-open connection; no KDF on the request path
            p = lookup_session(store, token, via)
        request.scope["principal"] = p
        return p

    def _check_csrf(p: Principal, supplied: str | None) -> None:
        if p.via == "cookie" and not (supplied and hmac.compare_digest(supplied, p.csrf_token)):
            raise HTTPException(403, "missing or wrong CSRF token (send X-CSRF-Token)")

    async def api_user(request: Request) -> Principal:
        p = _principal(request)
        if p is None:
            raise HTTPException(401, "not signed in", headers={"WWW-Authenticate": "Bearer"})
        if request.method not in SAFE_METHODS:
            _check_csrf(p, request.headers.get("x-csrf-token"))
        return p

    async def api_admin(p: Principal = Depends(api_user)) -> Principal:
        if not p.is_admin:
            raise HTTPException(403, "admin role required")
        return p

    async def page_user(request: Request) -> Principal:
        p = _principal(request)
        if p is None:
            raise _LoginRequired()
        if request.method not in SAFE_METHODS:
            form = await request.form()
            _check_csrf(p, request.headers.get("x-csrf-token") or form.get("csrf_token"))
        return p

    async def page_admin(p: Principal = Depends(page_user)) -> Principal:
        if not p.is_admin:
            raise HTTPException(403, "admin role required")
        return p

    @app.exception_handler(_LoginRequired)
    async def _to_login(request: Request, exc: _LoginRequired):
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    async def _write(fn):
        try:
            return await store.awrite(fn)
        except NotFound as e:
            raise HTTPException(404, str(e)) from None
        except Conflict as e:
            raise HTTPException(409, str(e)) from None
        except (LabelError, ValueError) as e:
            raise HTTPException(422, str(e)) from None

    # ------------------------------------------------------------------ API: auth
    def _reserve(username: str, address: str) -> bool:
        """A log-in slot (see ``LoginThrottle``), or 429 with Retry-After."""
        try:
            return store.write(lambda c: throttle.reserve(c, username, address))
        except Throttled as e:
            raise HTTPException(429, "too many failed log-ins; try again later",
                                headers={"Retry-After": str(int(e.retry_after) + 1)}) from None

    def _login(username: str, password: str, address: str, kind: str):
        # runs in the thread pool (sync endpoints): the password check must not block the loop
        known = _reserve(username, address)
        with store.read() as conn:
            user = authenticate(conn, username, password)
        if user is None:
            return None  # the reserved slot stays counted: that is the failure
        old_hash = user["password_hash"]
        new_hash = hash_password(password) if needs_rehash(old_hash) else None  # outside the writer

        def job(c):
            throttle.succeeded(c, username, address, known)
            if new_hash is not None:  # upgrade an older hash (scrypt, weaker argon2) now that we know the password
                c.execute(update(db.users).where(db.users.c.id == user["id"], db.users.c.password_hash == old_hash)
                          .values(password_hash=new_hash))
            return create_session(c, user["id"], kind, session_ttl_s)
        token, csrf, exp = store.write(job)
        return user, token, csrf, exp

    def _address(request: Request) -> str:
        return request.client.host if request.client else "?"

    @app.post("/api/auth/login", tags=["auth"])
    def api_login(body: LoginIn, request: Request):
        """Credentials -> a bearer token (``Authorization: Bearer <token>``) with its expiry."""
        res = _login(body.username, body.password, _address(request), "api")
        if res is None:
            raise HTTPException(401, "wrong user name or password")
        user, token, csrf, exp = res
        return {"token": token, "token_type": "bearer", "csrf_token": csrf, "expires_at": exp,
                "user": {"id": user["id"], "username": user["username"], "role": user["role"]}}

    @app.post("/api/auth/logout", tags=["auth"])
    async def api_logout(p: Principal = Depends(api_user)):
        await store.awrite(lambda c: delete_session(c, p.token_hash))
        return {"ok": True}

    @app.get("/api/me", tags=["auth"])
    async def api_me(p: Principal = Depends(api_user)):
        return {"id": p.user_id, "username": p.username, "role": p.role}

    def _change_password(p: Principal, current: str, new: str, address: str) -> None:
        """The signed-in user's own password change: the current password is checked under the
        log-in throttle (a stolen session must not become a way to guess it); every other
        session of the user ends."""
        known = _reserve(p.username, address)
        with store.read() as conn:
            row = conn.execute(select(db.users.c.password_hash).where(db.users.c.id == p.user_id)).first()
        if row is None or not verify_password(current, row[0]):
            raise HTTPException(403, "the current password is wrong")
        new_hash = hash_password(new)

        def job(c):
            throttle.succeeded(c, p.username, address, known)
            update_user(c, p.user_id, password_hash=new_hash, keep_session=p.token_hash)
        store.write(job)

    @app.post("/api/me/password", tags=["auth"])
    def api_change_password(body: PasswordChange, request: Request, p: Principal = Depends(api_user)):
        """Change one's own password (give the current one); one's other sessions end."""
        _change_password(p, body.current_password, body.new_password, _address(request))
        return {"ok": True}

    # ------------------------------------------------------------------ API: labelling
    def _members(conn) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {}
        for pid, uid in conn.execute(select(db.project_members.c.project_id, db.project_members.c.user_id)):
            out.setdefault(pid, set()).add(uid)
        return out

    def _my_projects(p: Principal) -> list[dict]:
        A = db.assignments
        with store.read() as conn:
            mine = dict(conn.execute(select(A.c.project_id, func.count()).where(
                A.c.user_id == p.user_id, A.c.status == "done").group_by(A.c.project_id)).all())
            members = _members(conn)
            out = []
            for row in overview(conn):
                allowed = members.get(row["id"])
                if row["active"] and (not allowed or p.user_id in allowed):
                    out.append(dict(row, mine=mine.get(row["id"], 0)))
        return out

    @app.get("/api/projects", tags=["labelling"])
    def api_projects(p: Principal = Depends(api_user)):
        """Active projects offered to the caller (a member, or the project has no members) with
        their progress and the caller's own label count."""
        return _my_projects(p)

    @app.post("/api/tasks/next", tags=["labelling"], responses={204: {"description": "nothing left"}})
    async def api_next(project_id: int | None = Query(None, ge=1, le=MAX_ID), p: Principal = Depends(api_user)):
        """Claim the caller's next task (their open task first). 204 when nothing is left for them.
        A POST (with the CSRF token from a browser): claiming a task changes state, so a link or
        an image on another site must not be able to do it."""
        task = await _write(lambda c: next_task(c, p.user_id, project_id, now=clock(), lease_s=lease_s))
        return Response(status_code=204) if task is None else _json(task)

    @app.get("/api/tasks/next", include_in_schema=False)
    async def api_next_get():
        return JSONResponse({"detail": "claiming a task changes state: use POST /api/tasks/next"},
                            status_code=405, headers={"Allow": "POST"})

    @app.get("/api/tasks/{task_id}", tags=["labelling"])
    async def api_task(task_id: Id, p: Principal = Depends(api_user)):
        with store.read() as conn:
            try:
                return get_task(conn, p.user_id, task_id)
            except NotFound as e:
                raise HTTPException(404, str(e)) from None

    @app.post("/api/tasks/{task_id}/label", tags=["labelling"])
    async def api_label(task_id: Id, verdict: Verdict, next: bool = Query(False),  # noqa: A002
                        p: Principal = Depends(api_user)):
        """Submit a verdict (idempotent per task). With ``?next=true`` the reply also carries the
        next task of the same project (``next``: null when none), in the same transaction."""
        body = verdict.model_dump(exclude_none=True)
        duration = body.pop("duration_ms", None)

        def job(c):
            t = clock()
            res = submit_label(c, p.user_id, task_id, body, duration, now=t)
            if next:
                res["next"] = next_task(c, p.user_id, res["project_id"], now=t, lease_s=lease_s)
            return res
        return _json(await _write(job))

    @app.post("/api/tasks/{task_id}/skip", tags=["labelling"])
    async def api_skip(task_id: Id, next: bool = Query(False), p: Principal = Depends(api_user)):  # noqa: A002
        def job(c):
            t = clock()
            res = skip_task(c, p.user_id, task_id, now=t)
            if next:
                pid = c.execute(select(db.assignments.c.project_id).where(db.assignments.c.id == task_id)).scalar()
                res["next"] = next_task(c, p.user_id, pid, now=t, lease_s=lease_s)
            return res
        return await _write(job)

    # ------------------------------------------------------------------ API: admin
    def _create_project(body: ProjectIn) -> dict:
        if body.scale_min >= body.scale_max:
            raise HTTPException(422, "scale_min must be below scale_max")

        def job(c):
            exists = c.execute(select(db.projects.c.id).where(db.projects.c.name == body.name)).first()
            if exists:
                raise ValueError(f"a project named {body.name!r} exists")
            res = c.execute(insert(db.projects).values(
                name=body.name, task_type=body.task_type, instructions=body.instructions,
                overlap=body.overlap, gold_rate=body.gold_rate, scale_min=body.scale_min,
                scale_max=body.scale_max, active=True, n_items=0, n_labels=0, created_at=time.time()))
            return {"id": int(res.inserted_primary_key[0]), **body.model_dump()}
        try:
            return store.write(job)
        except ValueError as e:
            raise HTTPException(409, str(e)) from None

    def _project(project_id: int) -> dict:
        with store.read() as conn:
            row = conn.execute(select(db.projects).where(db.projects.c.id == project_id)).mappings().first()
        if row is None:
            raise HTTPException(404, f"no project {project_id}")
        return dict(row)

    def _import(project_id: int, source, label: str | None = None, redact_request: bool = False) -> dict:
        proj = _project(project_id)
        try:
            parsed = parse_items(source, proj["task_type"], (proj["scale_min"], proj["scale_max"]))
        except DataError as e:
            if label is not None:
                e = DataError(e.message, path=label, line=e.line if e.index is None else None,
                              index=e.index, field=e.field, reason=e.reason)
            raise HTTPException(422, {"error": str(e), "file": e.path, "line": e.line, "field": e.field,
                                      "imported": 0}) from None
        parsed, n_copies = drop_duplicate_items(parsed)  # as `feedback import` does
        out: dict = {"duplicates_dropped": n_copies} if n_copies else {}
        if redact_all or redact_request:
            parsed, counts, n_equal = redact_items(parsed)
            out["redacted"] = dict(counts)
            if n_equal:
                out["left_out"] = n_equal  # items whose responses became one text
        n = store.write(lambda c: add_items(c, project_id, parsed))  # one transaction: all or nothing
        return {"imported": n, "gold": sum(1 for x in parsed if x["is_gold"]), **out}

    @app.get("/api/admin/projects", tags=["admin"])
    def api_admin_projects(p: Principal = Depends(api_admin)):
        with store.read() as conn:
            return overview(conn)

    @app.post("/api/admin/projects", tags=["admin"], status_code=201)
    def api_create_project(body: ProjectIn, p: Principal = Depends(api_admin)):
        return _create_project(body)

    @app.patch("/api/admin/projects/{project_id}", tags=["admin"])
    def api_patch_project(project_id: Id, body: ProjectPatch, p: Principal = Depends(api_admin)):
        _project(project_id)
        values = body.model_dump(exclude_none=True)
        if values:
            store.write(lambda c: c.execute(update(db.projects).where(db.projects.c.id == project_id).values(**values)))
        return _project(project_id)

    @app.post("/api/admin/projects/{project_id}/items", tags=["admin"])
    def api_add_items(project_id: Id, body: ItemsIn, redact: bool = False, p: Principal = Depends(api_admin)):
        """Import items given as JSON (same fields as a JSONL line). All or nothing: the first bad
        item answers 422 naming its index and field, and nothing is imported. ``redact=true``
        replaces personal data first (always, when the server runs with ``--redact true``)."""
        return _import(project_id, body.items, "<request>", redact)

    @app.post("/api/admin/projects/{project_id}/import", tags=["admin"], max_body_size=max_import_bytes)
    async def api_import(project_id: Id, file: UploadFile = File(...), redact: bool = False,
                         p: Principal = Depends(api_admin)):
        """Import a JSONL file (multipart upload; at most ``--max_import_mb``, 413 above).
        All or nothing; errors name file, line and field. ``redact=true`` replaces personal data
        first (always, when the server runs with ``--redact true``)."""
        import asyncio
        import shutil
        import tempfile

        name = _upload_name(file.filename)
        with tempfile.TemporaryDirectory() as d:
            # the saved file's name is ours (the reader only looks at its ending: .gz, .json);
            # the client's name is only the label in messages
            path = Path(d) / ("upload" + "".join(s for s in Path(name).suffixes[-2:] if s in _SUFFIXES))

            def save():  # the upload is already spooled to disk past 1 MB: copy in chunks
                with open(path, "wb") as out:
                    shutil.copyfileobj(file.file, out, 1 << 20)
            await asyncio.to_thread(save)
            return await asyncio.to_thread(_import, project_id, path, name, redact)

    @app.post("/api/admin/projects/{project_id}/generate", tags=["admin"])
    def api_generate(project_id: Id, body: GenerateIn, p: Principal = Depends(api_admin)):
        """Live generation hook: new items from the configured generator (501 when none is)."""
        if generator is None:
            raise HTTPException(501, "no response generator is configured for this server")
        from .generation import generate_items

        proj = _project(project_id)
        lo, hi = TASK_TYPES[proj["task_type"]]
        n = min(max(body.n, lo), hi)
        try:
            return {"imported": generate_items(store, project_id, body.prompts, generator, n, redact=redact_all)}
        except LookupError as e:  # the generator has no model yet (e.g. a loop still in its setup)
            raise HTTPException(503, str(e)) from None

    @app.get("/api/admin/projects/{project_id}/dashboard", tags=["admin"])
    def api_dashboard(project_id: Id, p: Principal = Depends(api_admin)):
        """Progress, per-labeler throughput and gold accuracy, Cohen's kappa per labeler pair and
        Krippendorff's alpha, computed from the stored labels."""
        with store.read() as conn:
            try:
                return project_dashboard(conn, project_id)
            except LookupError as e:
                raise HTTPException(404, str(e)) from None

    @app.get("/api/admin/projects/{project_id}/labels", tags=["admin"])
    def api_labels(project_id: Id, redact: bool = False, p: Principal = Depends(api_admin)):
        """Every label of the project as stored; ``redact=true`` (always, when the server runs with
        ``--redact true``) replaces personal data in their payloads (rewrites, comments)."""
        L, U = db.labels, db.users
        with store.read() as conn:
            rows = conn.execute(select(L.c.id, L.c.item_id, L.c.assignment_id, U.c.username, L.c.payload,
                                       L.c.is_gold, L.c.correct, L.c.duration_ms, L.c.created_at)
                                .select_from(L.join(U, U.c.id == L.c.user_id))
                                .where(L.c.project_id == project_id).order_by(L.c.id)).mappings()
            out = [dict(r) for r in rows]
        if redact or redact_all:
            from rlhfkit.privacy import redact_value

            for r in out:
                r["payload"] = redact_value(r["payload"])
        return out

    @app.get("/api/admin/projects/{project_id}/export", tags=["admin"])
    def api_export(project_id: Id, kind: Literal["pairs", "rankings", "ratings", "thumbs", "sft", "rewrites"],
                   aggregate: Literal["none", "majority"] = "none", include_gold: bool = False,
                   redact: bool = False, with_labeler: bool = True,
                   min_gold_accuracy: float = Query(0.0, ge=0.0, le=1.0), weight_by_gold: bool = False,
                   p: Principal = Depends(api_admin)):
        """JSON lines readable by ``rlhfkit.data.read_records(path, kind)``. ``redact=true`` (always,
        when the server runs with ``--redact true``) replaces personal data and leaves out pairs whose
        answers became one text; the header ``X-Redacted`` says what was replaced and left out.
        ``with_labeler``, ``min_gold_accuracy``, ``weight_by_gold``: as ``feedback export`` (labeler
        pseudonyms, on by default; gold-accuracy threshold and weights); the header ``X-Export-Note``
        says what they left out or gave, as that command's last line does."""
        proj = _project(project_id)
        try:
            key = labeler_key(store.url) if with_labeler and aggregate == "none" else None
        except ValueError as e:  # the store's key file: the server's problem, not the request's
            raise HTTPException(500, str(e)) from None
        with store.read() as conn:
            try:
                result = export_labels(conn, project_id, kind, include_gold=include_gold, aggregate=aggregate,
                                       labeler_key=key, min_gold_accuracy=min_gold_accuracy or None,
                                       weight_by_gold=weight_by_gold)
            except ValueError as e:
                raise HTTPException(422, str(e)) from None
        recs, note = result.records, result.note()
        if with_labeler and aggregate == "none" and key is None:
            note += f"; labeler ids left out: set ${LABELER_KEY_ENV} to give them from a database URL"
        headers = {"X-Export-Note": note.removeprefix("; ")} if note else {}
        if redact or redact_all:
            recs, counts, n_equal = redact_export(recs)
            headers["X-Redacted"] = json.dumps({**dict(sorted(counts.items())), "pairs_left_out": n_equal})
        body = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in recs)
        fname = f"{_slug(proj['name'])}-{kind}.jsonl"
        return Response(body.encode(), media_type="application/x-ndjson",
                        headers={"Content-Disposition": f'attachment; filename="{fname}"', **headers})

    @app.get("/api/admin/users", tags=["admin"])
    def api_users(p: Principal = Depends(api_admin)):
        U = db.users
        with store.read() as conn:
            return [dict(r) for r in conn.execute(select(U.c.id, U.c.username, U.c.role, U.c.active,
                                                         U.c.created_at).order_by(U.c.id)).mappings()]

    @app.post("/api/admin/users", tags=["admin"], status_code=201)
    def api_create_user(body: UserIn, p: Principal = Depends(api_admin)):
        return _create_user(body.username, body.password, body.role)

    def _update_user(user_id: int, body: UserPatch, p: Principal) -> dict:
        new_hash = None if body.password is None else hash_password(body.password)  # outside the writer
        keep = p.token_hash if user_id == p.user_id else None  # an admin resetting their own: stay signed in

        def job(c):
            return update_user(c, user_id, active=body.active, role=body.role, password_hash=new_hash,
                               keep_session=keep)
        try:
            return store.write(job)
        except LookupError as e:
            raise HTTPException(404, str(e)) from None
        except ValueError as e:
            raise HTTPException(409, str(e)) from None

    @app.patch("/api/admin/users/{user_id}", tags=["admin"])
    def api_update_user(user_id: Id, body: UserPatch, p: Principal = Depends(api_admin)):
        """Deactivate or reactivate a user, change their role, or reset their password. A
        deactivated user's sessions end at once (their next request answers 401) and their open
        tasks go back to the queue; a reset password ends their sessions too. The last active
        admin cannot be deactivated or demoted (409)."""
        return _update_user(user_id, body, p)

    def _project_members(project_id: int) -> list[dict]:
        U, M = db.users, db.project_members
        with store.read() as conn:
            return [dict(r) for r in conn.execute(
                select(U.c.id, U.c.username, U.c.role, U.c.active).select_from(M.join(U, U.c.id == M.c.user_id))
                .where(M.c.project_id == project_id).order_by(U.c.username)).mappings()]

    def _set_members(project_id: int, usernames: list[str]) -> list[dict]:
        _project(project_id)
        names = list(dict.fromkeys(n.strip() for n in usernames if n.strip()))
        U, M = db.users, db.project_members

        def job(c):
            ids = dict(c.execute(select(U.c.username, U.c.id).where(U.c.username.in_(names))).all()) if names else {}
            unknown = [n for n in names if n not in ids]
            if unknown:
                raise LabelError(f"field 'usernames': no user {unknown[0]!r}")
            after = set(ids.values())
            c.execute(delete(M).where(M.c.project_id == project_id))
            if after:
                c.execute(insert(M), [{"project_id": project_id, "user_id": u} for u in sorted(after)])
                # whoever had work here and is no longer offered the project hands it back
                holders = {r[0] for r in c.execute(select(db.assignments.c.user_id).where(
                    db.assignments.c.project_id == project_id, db.assignments.c.status == "open"))}
                for u in holders - after:
                    release_open_tasks(c, u, project_id)
        store.write(job)
        return _project_members(project_id)

    @app.get("/api/admin/projects/{project_id}/members", tags=["admin"])
    def api_members(project_id: Id, p: Principal = Depends(api_admin)):
        """The labelers the project is restricted to (empty: open to every labeler)."""
        _project(project_id)
        return _project_members(project_id)

    @app.put("/api/admin/projects/{project_id}/members", tags=["admin"])
    def api_set_members(project_id: Id, body: MembersIn, p: Principal = Depends(api_admin)):
        """Restrict the project to these users (an empty list opens it to every labeler again).
        Open tasks of users no longer offered the project go back to the queue."""
        try:
            return _set_members(project_id, body.usernames)
        except LabelError as e:
            raise HTTPException(422, str(e)) from None

    def _create_user(username: str, password: str, role: str) -> dict:
        def job(c):
            if c.execute(select(db.users.c.id).where(db.users.c.username == username)).first():
                raise Conflict(f"user {username!r} exists")
            return create_user(c, username, password, role)
        try:
            uid = store.write(job)
        except Conflict as e:
            raise HTTPException(409, str(e)) from None
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        return {"id": uid, "username": username, "role": role}

    # ------------------------------------------------------------------ pages
    def render(request: Request, name: str, p: Principal | None, status: int = 200, **ctx) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"user": p, **ctx}, status_code=status)

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str = "/", error: str | None = None):  # noqa: A002
        csrf = secrets.token_urlsafe(24)
        resp = render(request, "login.html", None, next=_safe_next(next), error=error, csrf_token=csrf)
        resp.set_cookie(LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="strict", secure=secure_cookies,
                        max_age=3600)
        return resp

    @app.post("/login", include_in_schema=False)
    def login_submit(request: Request, username: str = Form(...), password: str = Form(...),
                     csrf_token: str = Form(""), next: str = Form("/")):  # noqa: A002
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not (cookie and csrf_token and hmac.compare_digest(cookie, csrf_token)):
            raise HTTPException(403, "missing or wrong CSRF token; reload the log-in page")
        res = _login(username, password, _address(request), "browser")
        if res is None:
            csrf = secrets.token_urlsafe(24)
            resp = render(request, "login.html", None, status=401, next=_safe_next(next),
                          error="Wrong user name or password.", csrf_token=csrf)
            resp.set_cookie(LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="strict",
                            secure=secure_cookies, max_age=3600)
            return resp
        _user, token, _csrf, _exp = res
        resp = RedirectResponse(_safe_next(next), status_code=303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="lax", secure=secure_cookies,
                        max_age=int(session_ttl_s), path="/")
        resp.delete_cookie(LOGIN_CSRF_COOKIE)
        return resp

    @app.post("/logout", include_in_schema=False)
    async def logout(p: Principal = Depends(page_user)):
        await store.awrite(lambda c: delete_session(c, p.token_hash))
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request, p: Principal = Depends(page_user)):
        return render(request, "home.html", p, projects=_my_projects(p))

    @app.post("/account/password", include_in_schema=False)
    def account_password(request: Request, current_password: str = Form(...), new_password: str = Form(...),
                         p: Principal = Depends(page_user)):
        try:
            PasswordChange(current_password=current_password, new_password=new_password)
            _change_password(p, current_password, new_password, _address(request))
        except (HTTPException, ValueError) as e:
            detail = getattr(e, "detail", None) or "the new password must have at least 8 characters"
            return render(request, "home.html", p, status=getattr(e, "status_code", 422),
                          projects=_my_projects(p), error=detail)
        return render(request, "home.html", p, projects=_my_projects(p), msg="password changed")

    @app.get("/label/{project_id}", response_class=HTMLResponse, include_in_schema=False)
    def label_page(request: Request, project_id: Id, p: Principal = Depends(page_user)):
        with store.read() as conn:
            allowed = may_label(conn, p.user_id, project_id)
        if not allowed:  # a deactivated project, or one restricted to other labelers
            raise HTTPException(404, f"no project {project_id} to label")
        return render(request, "label.html", p, project=_project(project_id), flags=FLAGS)

    @app.get("/admin", response_class=HTMLResponse, include_in_schema=False)
    def admin_page(request: Request, p: Principal = Depends(page_admin), msg: str | None = None,
                   error: str | None = None):
        with store.read() as conn:
            projects = overview(conn)
            users = [dict(r) for r in conn.execute(select(db.users.c.id, db.users.c.username, db.users.c.role,
                                                          db.users.c.active).order_by(db.users.c.id)).mappings()]
        return render(request, "admin.html", p, projects=projects, users=users, msg=msg, error=error,
                      task_types=list(TASK_TYPES))

    @app.post("/admin/projects", include_in_schema=False)
    def admin_create_project(name: str = Form(...), task_type: str = Form(...), instructions: str = Form(""),
                             overlap: int = Form(1), gold_rate: float = Form(0.0),
                             p: Principal = Depends(page_admin)):
        try:
            body = ProjectIn(name=name, task_type=task_type, instructions=instructions, overlap=overlap,
                             gold_rate=gold_rate)
            proj = _create_project(body)
        except (HTTPException, ValueError) as e:
            return RedirectResponse(f"/admin?error={_q(getattr(e, 'detail', str(e)))}", status_code=303)
        return RedirectResponse(f"/admin/projects/{proj['id']}?msg=created", status_code=303)

    @app.post("/admin/users", include_in_schema=False)
    def admin_create_user(username: str = Form(...), password: str = Form(...), role: str = Form("labeler"),
                          p: Principal = Depends(page_admin)):
        try:
            _create_user(username, password, role)
        except HTTPException as e:
            return RedirectResponse(f"/admin?error={_q(e.detail)}", status_code=303)
        return RedirectResponse(f"/admin?msg={_q('user ' + username + ' created')}", status_code=303)

    @app.post("/admin/users/{user_id}", include_in_schema=False)
    def admin_update_user(user_id: Id, role: str = Form(...), active: str = Form(...), password: str = Form(""),
                          p: Principal = Depends(page_admin)):
        try:
            body = UserPatch(role=role, active=active == "active", password=password or None)
            row = _update_user(user_id, body, p)
        except (HTTPException, ValueError) as e:
            return RedirectResponse(f"/admin?error={_q(getattr(e, 'detail', str(e)))}", status_code=303)
        what = f"user {row['username']} saved" + ("; password reset, sessions ended" if password else "")
        return RedirectResponse(f"/admin?msg={_q(what)}", status_code=303)

    @app.get("/admin/projects/{project_id}", response_class=HTMLResponse, include_in_schema=False)
    def admin_project_page(request: Request, project_id: Id, p: Principal = Depends(page_admin),
                           msg: str | None = None, error: str | None = None):
        with store.read() as conn:
            try:
                dash = project_dashboard(conn, project_id)
            except LookupError:
                raise HTTPException(404, f"no project {project_id}") from None
            labelers = [dict(r) for r in conn.execute(select(db.users.c.id, db.users.c.username, db.users.c.role)
                                                      .where(db.users.c.active == True)  # noqa: E712
                                                      .order_by(db.users.c.username)).mappings()]
            active = conn.execute(select(db.projects.c.active).where(db.projects.c.id == project_id)).scalar()
        members = {m["id"] for m in _project_members(project_id)}
        kinds = [k for k, types in EXPORT_KINDS.items() if dash["project"]["type"] in types]
        return render(request, "admin_project.html", p, d=dash, msg=msg, error=error, export_kinds=kinds,
                      labelers=labelers, members=members, active=bool(active))

    @app.post("/admin/projects/{project_id}/members", include_in_schema=False)
    async def admin_set_members(request: Request, project_id: Id, p: Principal = Depends(page_admin)):
        names = [str(v) for v in (await request.form()).getlist("member")]
        import asyncio

        try:
            members = await asyncio.to_thread(_set_members, project_id, names)
        except (HTTPException, LabelError) as e:
            return RedirectResponse(f"/admin/projects/{project_id}?error={_q(getattr(e, 'detail', str(e)))}",
                                    status_code=303)
        msg = ("open to every labeler" if not members
               else "restricted to " + ", ".join(m["username"] for m in members))
        return RedirectResponse(f"/admin/projects/{project_id}?msg={_q(msg)}", status_code=303)

    @app.post("/admin/projects/{project_id}/active", include_in_schema=False)
    def admin_set_active(project_id: Id, active: str = Form(...), p: Principal = Depends(page_admin)):
        _project(project_id)
        on = active == "true"
        store.write(lambda c: c.execute(update(db.projects).where(db.projects.c.id == project_id).values(active=on)))
        return RedirectResponse(f"/admin/projects/{project_id}?msg={'activated' if on else 'deactivated'}",
                                status_code=303)

    @app.post("/admin/projects/{project_id}/import", include_in_schema=False, max_body_size=max_import_bytes)
    async def admin_import(project_id: Id, file: UploadFile = File(...), p: Principal = Depends(page_admin)):
        try:
            res = await api_import(project_id, file, p=p)
        except HTTPException as e:
            detail = e.detail["error"] if isinstance(e.detail, dict) else e.detail
            return RedirectResponse(f"/admin/projects/{project_id}?error={_q(detail)}", status_code=303)
        msg = f"{res['imported']} items imported"
        if "redacted" in res:
            from rlhfkit.privacy import count_text

            msg += "; personal data replaced: " + (count_text(res["redacted"]) or "none found")
        return RedirectResponse(f"/admin/projects/{project_id}?msg={_q(msg)}", status_code=303)

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return {"ok": True}

    return app


def _json(obj: Any) -> Response:
    """A JSON reply without FastAPI's recursive ``jsonable_encoder`` (hot paths return plain dicts)."""
    return Response(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode(),
                    media_type="application/json")


def _q(s: Any) -> str:
    from urllib.parse import quote

    return quote(str(s), safe="")


_SUFFIXES = (".jsonl", ".json", ".gz")


def _upload_name(filename: str | None) -> str:
    """The client's name of an uploaded file, for messages only: its last path part (either
    separator). A name that is no file name (``.``, ``..``, control characters) is a 422 naming
    the field ``file``."""
    name = (filename or "upload.jsonl").replace("\\", "/").rsplit("/", 1)[-1]
    if name in ("", ".", "..") or any(ord(ch) < 32 or ch == "\x7f" for ch in name) or len(name) > 255:
        raise HTTPException(422, {"error": f"field 'file': the upload's name {escape_surrogates(filename)!r} is not a "
                                           f"file name", "file": None, "line": None, "field": "file", "imported": 0})
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise HTTPException(422, {"error": "field 'file': the upload's name is not valid text", "file": None,
                                  "line": None, "field": "file", "imported": 0}) from None
    return name


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in s).strip("-") or "project"


def _safe_next(nxt: str | None) -> str:
    """Only same-site paths after log-in (no open redirect)."""
    if not nxt or not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
        return "/"
    return nxt
