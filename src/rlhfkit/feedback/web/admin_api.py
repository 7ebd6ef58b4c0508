"""The admin JSON API (``/api/admin/*``): projects, items, live generation, dashboards, labels,
exports, users and members. Every route needs the admin role: the routers themselves depend on
``api_admin``, so a route added here cannot leave it out. ``upload_router`` holds the file import,
whose body limit is the server's ``max_import_bytes`` (``create_app`` includes it with it)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from sqlalchemy import select, update

from .. import db
from ..generation import generate_items
from ..http_hardening import StrictJSONRoute
from ..stats import overview, project_dashboard
from ..tasks import TASK_TYPES, LabelError
from .actions import (
    create_project,
    create_user,
    get_project,
    import_items,
    project_export,
    project_labels,
    project_members,
    set_members,
    update_user,
)
from .context import Ctx, Id
from .deps import ApiAdmin, api_admin
from .schemas import GenerateIn, ItemsIn, MembersIn, ProjectIn, ProjectPatch, UserIn, UserPatch
from .upload import UPLOAD_BODY, import_upload

__all__ = ["router", "upload_router"]

router = APIRouter(route_class=StrictJSONRoute, dependencies=[Depends(api_admin)], tags=["admin"])
upload_router = APIRouter(route_class=StrictJSONRoute, dependencies=[Depends(api_admin)], tags=["admin"])


# ----------------------------------------------------------------------------- projects and items
@router.get("/api/admin/projects")
def api_admin_projects(p: ApiAdmin, ctx: Ctx):
    with ctx.store.read() as conn:
        return overview(conn)


@router.post("/api/admin/projects", status_code=201)
def api_create_project(body: ProjectIn, p: ApiAdmin, ctx: Ctx):
    return create_project(ctx, body)


@router.patch("/api/admin/projects/{project_id}")
def api_patch_project(project_id: Id, body: ProjectPatch, p: ApiAdmin, ctx: Ctx):
    get_project(ctx, project_id)
    values = body.model_dump(exclude_none=True)
    if values:
        ctx.store.write(lambda c: c.execute(update(db.projects).where(db.projects.c.id == project_id).values(**values)))
    return get_project(ctx, project_id)


@router.post("/api/admin/projects/{project_id}/items")
def api_add_items(project_id: Id, body: ItemsIn, p: ApiAdmin, ctx: Ctx, redact: bool = False):
    """Import items given as JSON (same fields as a JSONL line). All or nothing: the first bad
    item answers 422 naming its index and field, and nothing is imported. ``redact=true``
    replaces personal data first (always, when the server runs with ``--redact true``)."""
    return import_items(ctx, project_id, body.items, "<request>", redact)


@upload_router.post("/api/admin/projects/{project_id}/import", openapi_extra=UPLOAD_BODY)
async def api_import(project_id: Id, request: Request, p: ApiAdmin, ctx: Ctx, redact: bool = False):
    """Import a JSONL file: the multipart field ``file`` (at most ``--max_import_mb``, 413
    above; a gzip file counts by its decompressed size). All or nothing; errors name file,
    line and field. ``redact=true`` replaces personal data first (always, when the server
    runs with ``--redact true``)."""
    return await import_upload(ctx, request, project_id, redact)


@router.post("/api/admin/projects/{project_id}/generate")
def api_generate(project_id: Id, body: GenerateIn, p: ApiAdmin, ctx: Ctx):
    """Live generation hook: new items from the configured generator (501 when none is)."""
    if ctx.generator is None:
        raise HTTPException(501, "no response generator is configured for this server")
    proj = get_project(ctx, project_id)
    lo, hi = TASK_TYPES[proj["task_type"]]
    n = min(max(body.n, lo), hi)
    try:
        return {
            "imported": generate_items(ctx.store, project_id, body.prompts, ctx.generator, n, redact=ctx.redact_all)
        }
    except LookupError as e:  # the generator has no model yet (e.g. a loop still in its setup)
        raise HTTPException(503, str(e)) from None


@router.get("/api/admin/projects/{project_id}/dashboard")
def api_dashboard(project_id: Id, p: ApiAdmin, ctx: Ctx):
    """Progress, per-labeler throughput and gold accuracy, Cohen's kappa per labeler pair and
    Krippendorff's alpha, computed from the stored labels."""
    with ctx.store.read() as conn:
        try:
            return project_dashboard(conn, project_id)
        except LookupError as e:
            raise HTTPException(404, str(e)) from None


# ----------------------------------------------------------------------------- labels and exports
@router.get("/api/admin/projects/{project_id}/labels")
def api_labels(project_id: Id, p: ApiAdmin, ctx: Ctx, redact: bool = False):
    """Every label of the project as stored; ``redact=true`` (always, when the server runs with
    ``--redact true``) replaces personal data in their payloads (rewrites, comments)."""
    return project_labels(ctx, project_id, redact)


@router.get("/api/admin/projects/{project_id}/export")
def api_export(
    project_id: Id,
    kind: Literal["pairs", "rankings", "ratings", "thumbs", "sft", "rewrites"],
    p: ApiAdmin,
    ctx: Ctx,
    aggregate: Literal["none", "majority"] = "none",
    include_gold: bool = False,
    redact: bool = False,
    with_labeler: bool = True,
    min_gold_accuracy: float = Query(0.0, ge=0.0, le=1.0),
    weight_by_gold: bool = False,
):
    """JSON lines readable by ``rlhfkit.data.read_records(path, kind)``. ``redact=true`` (always,
    when the server runs with ``--redact true``) replaces personal data and leaves out pairs whose
    answers became one text; the header ``X-Redacted`` says what was replaced and left out.
    ``with_labeler``, ``min_gold_accuracy``, ``weight_by_gold``: as ``feedback export`` (labeler
    pseudonyms, on by default; gold-accuracy threshold and weights); the header ``X-Export-Note``
    says what they left out or gave."""
    body, fname, headers = project_export(
        ctx, project_id, kind, aggregate, include_gold, redact, with_labeler, min_gold_accuracy, weight_by_gold
    )
    return Response(
        body,
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{fname}"', **headers},
    )


# ----------------------------------------------------------------------------- users and members
@router.get("/api/admin/users")
def api_users(p: ApiAdmin, ctx: Ctx):
    U = db.users
    with ctx.store.read() as conn:
        return [
            dict(r)
            for r in conn.execute(
                select(U.c.id, U.c.username, U.c.role, U.c.active, U.c.created_at).order_by(U.c.id)
            ).mappings()
        ]


@router.post("/api/admin/users", status_code=201)
def api_create_user(body: UserIn, p: ApiAdmin, ctx: Ctx):
    return create_user(ctx, body.username, body.password, body.role)


@router.patch("/api/admin/users/{user_id}")
def api_update_user(user_id: Id, body: UserPatch, p: ApiAdmin, ctx: Ctx):
    """Deactivate or reactivate a user, change their role, or reset their password. A
    deactivated user's sessions end at once (their next request answers 401) and their open
    tasks go back to the queue; a reset password ends their sessions too. The last active
    admin cannot be deactivated or demoted (409)."""
    return update_user(ctx, user_id, body, p)


@router.get("/api/admin/projects/{project_id}/members")
def api_members(project_id: Id, p: ApiAdmin, ctx: Ctx):
    """The labelers the project is restricted to (empty: open to every labeler)."""
    get_project(ctx, project_id)
    return project_members(ctx, project_id)


@router.put("/api/admin/projects/{project_id}/members")
def api_set_members(project_id: Id, body: MembersIn, p: ApiAdmin, ctx: Ctx):
    """Restrict the project to these users (an empty list opens it to every labeler again).
    Open tasks of users no longer offered the project go back to the queue."""
    try:
        return set_members(ctx, project_id, body.usernames)
    except LabelError as e:
        raise HTTPException(422, str(e)) from None
