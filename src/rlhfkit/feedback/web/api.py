"""The JSON API of log-ins and labelling (``/api/auth``, ``/api/me``, ``/api/projects``,
``/api/tasks``). Labelers only ever see their own tasks (someone else's task id answers 404);
claiming a task changes state, so it is a POST."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from .. import db
from ..auth import delete_session
from ..http_hardening import StrictJSONRoute
from ..queue import NotFound, get_task, next_task, skip_task, submit_label
from .actions import change_password, client_address, login, my_projects, write
from .context import MAX_ID, Ctx, Id, json_response
from .deps import ApiUser
from .schemas import LoginIn, PasswordChange, Verdict

__all__ = ["router"]

router = APIRouter(route_class=StrictJSONRoute)


# ----------------------------------------------------------------------------- auth
@router.post("/api/auth/login", tags=["auth"])
def api_login(body: LoginIn, request: Request, ctx: Ctx):
    """Credentials -> a bearer token (``Authorization: Bearer <token>``) with its expiry."""
    res = login(ctx, body.username, body.password, client_address(request), "api")
    if res is None:
        raise HTTPException(401, "wrong user name or password")
    user, token, csrf, exp = res
    return {
        "token": token,
        "token_type": "bearer",
        "csrf_token": csrf,
        "expires_at": exp,
        "user": {"id": user["id"], "username": user["username"], "role": user["role"]},
    }


@router.post("/api/auth/logout", tags=["auth"])
async def api_logout(p: ApiUser, ctx: Ctx):
    await ctx.store.awrite(lambda c: delete_session(c, p.token_hash))
    return {"ok": True}


@router.get("/api/me", tags=["auth"])
async def api_me(p: ApiUser):
    return {"id": p.user_id, "username": p.username, "role": p.role}


@router.post("/api/me/password", tags=["auth"])
def api_change_password(body: PasswordChange, request: Request, p: ApiUser, ctx: Ctx):
    """Change one's own password (give the current one); one's other sessions end."""
    change_password(ctx, p, body.current_password, body.new_password, client_address(request))
    return {"ok": True}


# ----------------------------------------------------------------------------- labelling
@router.get("/api/projects", tags=["labelling"])
def api_projects(p: ApiUser, ctx: Ctx):
    """Active projects offered to the caller (a member, or the project has no members) with
    their progress and the caller's own label count."""
    return my_projects(ctx, p)


@router.post("/api/tasks/next", tags=["labelling"], responses={204: {"description": "nothing left"}})
async def api_next(p: ApiUser, ctx: Ctx, project_id: int | None = Query(None, ge=1, le=MAX_ID)):
    """Claim the caller's next task (their open task first). 204 when nothing is left for them.
    A POST (with the CSRF token from a browser): claiming a task changes state, so a link or
    an image on another site must not be able to do it."""
    task = await write(ctx, lambda c: next_task(c, p.user_id, project_id, now=ctx.clock(), lease_s=ctx.lease_s))
    return Response(status_code=204) if task is None else json_response(task)


@router.get("/api/tasks/next", include_in_schema=False)
async def api_next_get():
    return JSONResponse(
        {"detail": "claiming a task changes state: use POST /api/tasks/next"},
        status_code=405,
        headers={"Allow": "POST"},
    )


@router.get("/api/tasks/{task_id}", tags=["labelling"])
async def api_task(task_id: Id, p: ApiUser, ctx: Ctx):
    with ctx.store.read() as conn:
        try:
            return get_task(conn, p.user_id, task_id)
        except NotFound as e:
            raise HTTPException(404, str(e)) from None


@router.post("/api/tasks/{task_id}/label", tags=["labelling"])
async def api_label(task_id: Id, verdict: Verdict, p: ApiUser, ctx: Ctx, next: bool = Query(False)):  # noqa: A002
    """Submit a verdict (idempotent per task). With ``?next=true`` the reply also carries the
    next task of the same project (``next``: null when none), in the same transaction."""
    body = verdict.model_dump(exclude_none=True)
    duration = body.pop("duration_ms", None)

    def job(c):
        t = ctx.clock()
        res = submit_label(c, p.user_id, task_id, body, duration, now=t)
        if next:
            res["next"] = next_task(c, p.user_id, res["project_id"], now=t, lease_s=ctx.lease_s)
        return res

    return json_response(await write(ctx, job))


@router.post("/api/tasks/{task_id}/skip", tags=["labelling"])
async def api_skip(task_id: Id, p: ApiUser, ctx: Ctx, next: bool = Query(False)):  # noqa: A002
    def job(c):
        t = ctx.clock()
        res = skip_task(c, p.user_id, task_id, now=t)
        if next:
            pid = c.execute(select(db.assignments.c.project_id).where(db.assignments.c.id == task_id)).scalar()
            res["next"] = next_task(c, p.user_id, pid, now=t, lease_s=ctx.lease_s)
        return res

    return await write(ctx, job)
