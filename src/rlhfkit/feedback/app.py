"""The feedback web app: HTML pages for people and a JSON API under ``/api`` for scripts (OpenAPI
at ``/openapi.json``, docs at ``/docs``). ``create_app(db_url)`` builds it; ``server.serve`` runs it.

Auth: every request's session is looked up in the ``sessions`` table (token hash, expiry, active
user). Browsers hold the token in an HttpOnly cookie and must echo the session's CSRF token on
unsafe requests (form field ``csrf_token`` or header ``X-CSRF-Token``); scripts send
``Authorization: Bearer <token>`` from ``POST /api/auth/login`` (no CSRF: browsers never attach it
by themselves). Labelers only ever see their own tasks (someone else's task id answers 404);
``/api/admin/*`` and ``/admin*`` need the admin role (403).

Writes go through the store's group-commit writer and are answered only after their commit.
"""
from __future__ import annotations

import contextlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any, Callable, Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, insert, select, update

from rlhfkit.data import DataError

from . import db
from .auth import (
    LoginLimiter,
    Principal,
    authenticate,
    create_session,
    create_user,
    delete_session,
    lookup_session,
)
from .export import EXPORT_KINDS, export_records, redact_export
from .queue import DEFAULT_LEASE_S, Conflict, NotFound, add_items, get_task, next_task, skip_task, submit_label
from .stats import overview, project_dashboard
from .tasks import FLAGS, TASK_TYPES, LabelError, parse_items, redact_items

__all__ = ["create_app", "COOKIE"]

HERE = Path(__file__).resolve().parent
COOKIE = "rlhf_session"
LOGIN_CSRF_COOKIE = "rlhf_login_csrf"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


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
    duration_ms: int | None = Field(None, description="time spent, measured by the client")


class ProjectIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    task_type: Literal["pairwise", "ranking", "rating", "thumbs", "rewrite"]
    instructions: str = ""
    overlap: int = Field(1, ge=1, le=100)
    gold_rate: float = Field(0.0, ge=0.0, le=1.0)
    scale_min: int = 1
    scale_max: int = 7


class ProjectPatch(BaseModel):
    instructions: str | None = None
    overlap: int | None = Field(None, ge=1, le=100)
    gold_rate: float | None = Field(None, ge=0.0, le=1.0)
    active: bool | None = None


class UserIn(BaseModel):
    username: str
    password: str
    role: Literal["admin", "labeler"] = "labeler"


class ItemsIn(BaseModel):
    items: list[dict[str, Any]]


class GenerateIn(BaseModel):
    prompts: list[str]
    n: int = Field(2, ge=1, le=26)


class _LoginRequired(Exception):
    pass


# ----------------------------------------------------------------------------- app
def create_app(db_url: str = "feedback.db", *, store: db.Store | None = None, secure_cookies: bool = False,
               session_ttl_s: float = 12 * 3600, login_limiter: LoginLimiter | None = None,
               generator: Callable | None = None, lease_s: float | None = DEFAULT_LEASE_S,
               clock: Callable[[], float] = time.time, redact: bool = False) -> FastAPI:
    """The app on the database at ``db_url`` (SQLite path or SQLAlchemy URL; migrations are applied).

    ``generator``: optional live-generation hook, ``generator(prompts, n) -> list[list[dict]]``
    (for each prompt, n responses ``{"text", "model"}``), used by ``POST
    /api/admin/projects/{id}/generate`` (see ``rlhfkit.feedback.generation``).

    ``lease_s``: an open task older than this may be reassigned to another labeler (None: never);
    ``clock``: the time source of the task queue (tests pass a controllable one);
    ``redact``: replace personal data (``rlhfkit.privacy``) in every import before labelers see
    it and in every API export (without it, a request's ``?redact=true`` asks for it)."""
    store = store or db.Store(db_url)
    redact_all = redact  # the endpoints' own ``redact`` is the request's
    limiter = login_limiter or LoginLimiter()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        store.close()

    app = FastAPI(title="rlhfkit feedback", version="1", lifespan=lifespan,
                  description="Human feedback collection: tasks, labels, projects, users, exports.")
    app.state.store = store
    app.state.limiter = limiter
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
    def _login(username: str, password: str, ip: str, kind: str):
        wait = limiter.retry_after(username, ip)
        if wait > 0:
            raise HTTPException(429, "too many failed log-ins; try again later",
                                headers={"Retry-After": str(int(wait) + 1)})
        with store.read() as conn:
            user = authenticate(conn, username, password)
        if user is None:
            limiter.failed(username, ip)
            return None
        limiter.succeeded(username)
        token, csrf, exp = store.write(lambda c: create_session(c, user["id"], kind, session_ttl_s))
        return user, token, csrf, exp

    @app.post("/api/auth/login", tags=["auth"])
    def api_login(body: LoginIn, request: Request):
        """Credentials -> a bearer token (``Authorization: Bearer <token>``) with its expiry."""
        res = _login(body.username, body.password, request.client.host if request.client else "?", "api")
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

    # ------------------------------------------------------------------ API: labelling
    def _my_projects(p: Principal) -> list[dict]:
        A = db.assignments
        with store.read() as conn:
            mine = dict(conn.execute(select(A.c.project_id, func.count()).where(
                A.c.user_id == p.user_id, A.c.status == "done").group_by(A.c.project_id)).all())
            out = []
            for row in overview(conn):
                if row["active"]:
                    out.append(dict(row, mine=mine.get(row["id"], 0)))
        return out

    @app.get("/api/projects", tags=["labelling"])
    def api_projects(p: Principal = Depends(api_user)):
        """Active projects with their progress and the caller's own label count."""
        return _my_projects(p)

    @app.get("/api/tasks/next", tags=["labelling"], responses={204: {"description": "nothing left"}})
    async def api_next(project_id: int | None = None, p: Principal = Depends(api_user)):
        """The caller's next task (their open task first). 204 when nothing is left for them."""
        task = await _write(lambda c: next_task(c, p.user_id, project_id, now=clock(), lease_s=lease_s))
        return Response(status_code=204) if task is None else _json(task)

    @app.get("/api/tasks/{task_id}", tags=["labelling"])
    async def api_task(task_id: int, p: Principal = Depends(api_user)):
        with store.read() as conn:
            try:
                return get_task(conn, p.user_id, task_id)
            except NotFound as e:
                raise HTTPException(404, str(e)) from None

    @app.post("/api/tasks/{task_id}/label", tags=["labelling"])
    async def api_label(task_id: int, verdict: Verdict, next: bool = Query(False),  # noqa: A002
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
    async def api_skip(task_id: int, next: bool = Query(False), p: Principal = Depends(api_user)):  # noqa: A002
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
        out: dict = {}
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
    def api_patch_project(project_id: int, body: ProjectPatch, p: Principal = Depends(api_admin)):
        _project(project_id)
        values = body.model_dump(exclude_none=True)
        if values:
            store.write(lambda c: c.execute(update(db.projects).where(db.projects.c.id == project_id).values(**values)))
        return _project(project_id)

    @app.post("/api/admin/projects/{project_id}/items", tags=["admin"])
    def api_add_items(project_id: int, body: ItemsIn, redact: bool = False, p: Principal = Depends(api_admin)):
        """Import items given as JSON (same fields as a JSONL line). All or nothing: the first bad
        item answers 422 naming its index and field, and nothing is imported. ``redact=true``
        replaces personal data first (always, when the server runs with ``--redact true``)."""
        return _import(project_id, body.items, "<request>", redact)

    @app.post("/api/admin/projects/{project_id}/import", tags=["admin"])
    async def api_import(project_id: int, file: UploadFile = File(...), redact: bool = False,
                         p: Principal = Depends(api_admin)):
        """Import a JSONL file (multipart upload). All or nothing; errors name file, line and field.
        ``redact=true`` replaces personal data first (always, when the server runs with ``--redact true``)."""
        import tempfile

        data = await file.read()
        name = Path(file.filename or "upload.jsonl").name
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / name
            path.write_bytes(data)
            import asyncio
            return await asyncio.to_thread(_import, project_id, path, name, redact)

    @app.post("/api/admin/projects/{project_id}/generate", tags=["admin"])
    def api_generate(project_id: int, body: GenerateIn, p: Principal = Depends(api_admin)):
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
    def api_dashboard(project_id: int, p: Principal = Depends(api_admin)):
        """Progress, per-labeler throughput and gold accuracy, Cohen's kappa per labeler pair and
        Krippendorff's alpha, computed from the stored labels."""
        with store.read() as conn:
            try:
                return project_dashboard(conn, project_id)
            except LookupError as e:
                raise HTTPException(404, str(e)) from None

    @app.get("/api/admin/projects/{project_id}/labels", tags=["admin"])
    def api_labels(project_id: int, redact: bool = False, p: Principal = Depends(api_admin)):
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
    def api_export(project_id: int, kind: Literal["pairs", "rankings", "ratings", "thumbs", "sft", "rewrites"],
                   aggregate: Literal["none", "majority"] = "none", include_gold: bool = False,
                   redact: bool = False, p: Principal = Depends(api_admin)):
        """JSON lines readable by ``rlhfkit.data.read_records(path, kind)``. ``redact=true`` (always,
        when the server runs with ``--redact true``) replaces personal data and leaves out pairs whose
        answers became one text; the header ``X-Redacted`` says what was replaced and left out."""
        proj = _project(project_id)
        with store.read() as conn:
            try:
                recs = export_records(conn, project_id, kind, include_gold=include_gold, aggregate=aggregate)
            except ValueError as e:
                raise HTTPException(422, str(e)) from None
        headers = {}
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
        res = _login(username, password, request.client.host if request.client else "?", "browser")
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

    @app.get("/label/{project_id}", response_class=HTMLResponse, include_in_schema=False)
    def label_page(request: Request, project_id: int, p: Principal = Depends(page_user)):
        proj = _project(project_id)
        return render(request, "label.html", p, project=proj, flags=FLAGS)

    @app.get("/admin", response_class=HTMLResponse, include_in_schema=False)
    def admin_page(request: Request, p: Principal = Depends(page_admin), msg: str | None = None,
                   error: str | None = None):
        with store.read() as conn:
            projects = overview(conn)
            users = [dict(r) for r in conn.execute(select(db.users.c.id, db.users.c.username, db.users.c.role)
                                                   .order_by(db.users.c.id)).mappings()]
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

    @app.get("/admin/projects/{project_id}", response_class=HTMLResponse, include_in_schema=False)
    def admin_project_page(request: Request, project_id: int, p: Principal = Depends(page_admin),
                           msg: str | None = None, error: str | None = None):
        with store.read() as conn:
            try:
                dash = project_dashboard(conn, project_id)
            except LookupError:
                raise HTTPException(404, f"no project {project_id}") from None
        kinds = [k for k, types in EXPORT_KINDS.items() if dash["project"]["type"] in types]
        return render(request, "admin_project.html", p, d=dash, msg=msg, error=error, export_kinds=kinds)

    @app.post("/admin/projects/{project_id}/import", include_in_schema=False)
    async def admin_import(project_id: int, file: UploadFile = File(...), p: Principal = Depends(page_admin)):
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


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in s).strip("-") or "project"


def _safe_next(nxt: str | None) -> str:
    """Only same-site paths after log-in (no open redirect)."""
    if not nxt or not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
        return "/"
    return nxt
