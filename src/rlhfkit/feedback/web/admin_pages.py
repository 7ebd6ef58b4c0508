"""The admin pages (``/admin*``): projects and users, a project's dashboard, members, status and
the file import. Every route needs the admin role (the routers depend on ``page_admin``). A form
answers with a redirect, and the page it leads to shows the form's outcome once (``flash``); the
pages read no message from their link."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select, update

from rlhfkit.privacy import count_text

from .. import db
from ..auth import Principal
from ..export import EXPORT_KINDS
from ..http_hardening import StrictJSONRoute
from ..stats import overview, project_dashboard
from ..tasks import TASK_TYPES, LabelError
from .actions import create_project, create_user, get_project, project_members, set_members, update_user
from .context import AppContext, Ctx, Id
from .deps import PageAdmin, page_admin
from .flash import clear_flash, pop_flash, redirect_with_flash
from .schemas import ProjectIn, UserPatch
from .upload import import_upload

__all__ = ["router", "upload_router"]

router = APIRouter(route_class=StrictJSONRoute, dependencies=[Depends(page_admin)])
upload_router = APIRouter(route_class=StrictJSONRoute, dependencies=[Depends(page_admin)])


def _detail(e: Exception) -> str:
    """The message of a refused form: an HTTP error's detail (an import's own ``error``), else the text."""
    detail = getattr(e, "detail", None)
    if isinstance(detail, dict):
        return detail["error"]
    return detail if detail is not None else str(e)


def _page(ctx: AppContext, request: Request, p: Principal, name: str, **values) -> HTMLResponse:
    """An admin page with the message its form's redirect left (shown once)."""
    flash, present = pop_flash(request, p)
    resp = ctx.render(request, name, p, **values, **flash)
    return clear_flash(resp, secure=ctx.secure_cookies) if present else resp


def _back(ctx: AppContext, p: Principal, url: str, *, msg: str | None = None, error: str | None = None):
    return redirect_with_flash(url, p, secure=ctx.secure_cookies, msg=msg, error=error)


@router.get("/admin", response_class=HTMLResponse, include_in_schema=False)
def admin_page(request: Request, p: PageAdmin, ctx: Ctx):
    with ctx.store.read() as conn:
        projects = overview(conn)
        users = [
            dict(r)
            for r in conn.execute(
                select(db.users.c.id, db.users.c.username, db.users.c.role, db.users.c.active).order_by(db.users.c.id)
            ).mappings()
        ]
    return _page(ctx, request, p, "admin.html", projects=projects, users=users, task_types=list(TASK_TYPES))


@router.post("/admin/projects", include_in_schema=False)
def admin_create_project(
    p: PageAdmin,
    ctx: Ctx,
    name: str = Form(...),
    task_type: str = Form(...),
    instructions: str = Form(""),
    overlap: int = Form(1),
    gold_rate: float = Form(0.0),
):
    try:
        body = ProjectIn(
            name=name, task_type=task_type, instructions=instructions, overlap=overlap, gold_rate=gold_rate
        )
        proj = create_project(ctx, body)
    except (HTTPException, ValueError) as e:
        return _back(ctx, p, "/admin", error=_detail(e))
    return _back(ctx, p, f"/admin/projects/{proj['id']}", msg="created")


@router.post("/admin/users", include_in_schema=False)
def admin_create_user(
    p: PageAdmin, ctx: Ctx, username: str = Form(...), password: str = Form(...), role: str = Form("labeler")
):
    try:
        create_user(ctx, username, password, role)
    except HTTPException as e:
        return _back(ctx, p, "/admin", error=_detail(e))
    return _back(ctx, p, "/admin", msg=f"user {username} created")


@router.post("/admin/users/{user_id}", include_in_schema=False)
def admin_update_user(
    user_id: Id, p: PageAdmin, ctx: Ctx, role: str = Form(...), active: str = Form(...), password: str = Form("")
):
    try:
        body = UserPatch(role=role, active=active == "active", password=password or None)
        row = update_user(ctx, user_id, body, p)
    except (HTTPException, ValueError) as e:
        return _back(ctx, p, "/admin", error=_detail(e))
    what = f"user {row['username']} saved" + ("; password reset, sessions ended" if password else "")
    return _back(ctx, p, "/admin", msg=what)


@router.get("/admin/projects/{project_id}", response_class=HTMLResponse, include_in_schema=False)
def admin_project_page(request: Request, project_id: Id, p: PageAdmin, ctx: Ctx):
    with ctx.store.read() as conn:
        try:
            dash = project_dashboard(conn, project_id)
        except LookupError:
            raise HTTPException(404, f"no project {project_id}") from None
        labelers = [
            dict(r)
            for r in conn.execute(
                select(db.users.c.id, db.users.c.username, db.users.c.role)
                .where(db.users.c.active == True)  # noqa: E712
                .order_by(db.users.c.username)
            ).mappings()
        ]
        active = conn.execute(select(db.projects.c.active).where(db.projects.c.id == project_id)).scalar()
    members = {m["id"] for m in project_members(ctx, project_id)}
    kinds = [k for k, types in EXPORT_KINDS.items() if dash["project"]["type"] in types]
    return _page(
        ctx,
        request,
        p,
        "admin_project.html",
        d=dash,
        export_kinds=kinds,
        labelers=labelers,
        members=members,
        active=bool(active),
    )


@router.post("/admin/projects/{project_id}/members", include_in_schema=False)
async def admin_set_members(request: Request, project_id: Id, p: PageAdmin, ctx: Ctx):
    names = [str(v) for v in (await request.form()).getlist("member")]
    try:
        members = await asyncio.to_thread(set_members, ctx, project_id, names)
    except (HTTPException, LabelError) as e:
        return _back(ctx, p, f"/admin/projects/{project_id}", error=_detail(e))
    msg = "open to every labeler" if not members else "restricted to " + ", ".join(m["username"] for m in members)
    return _back(ctx, p, f"/admin/projects/{project_id}", msg=msg)


@router.post("/admin/projects/{project_id}/active", include_in_schema=False)
def admin_set_active(project_id: Id, p: PageAdmin, ctx: Ctx, active: str = Form(...)):
    get_project(ctx, project_id)
    on = active == "true"
    ctx.store.write(lambda c: c.execute(update(db.projects).where(db.projects.c.id == project_id).values(active=on)))
    return _back(ctx, p, f"/admin/projects/{project_id}", msg="activated" if on else "deactivated")


@upload_router.post("/admin/projects/{project_id}/import", include_in_schema=False)
async def admin_import(request: Request, project_id: Id, p: PageAdmin, ctx: Ctx):
    try:
        res = await import_upload(ctx, request, project_id, False)
    except HTTPException as e:
        return _back(ctx, p, f"/admin/projects/{project_id}", error=_detail(e))
    msg = f"{res['imported']} items imported"
    if "redacted" in res:
        msg += "; personal data replaced: " + (count_text(res["redacted"]) or "none found")
    return _back(ctx, p, f"/admin/projects/{project_id}", msg=msg)
