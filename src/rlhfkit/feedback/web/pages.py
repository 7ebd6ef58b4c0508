"""The pages every signed-in user has: log-in and log-out, the project list (with the password
change) and the labelling page. The log-in form carries its own CSRF token (a cookie echoed in
the form) since there is no session yet; the page shows no text from its link."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from ..auth import delete_session
from ..http_hardening import StrictJSONRoute
from ..queue import may_label
from ..tasks import FLAGS
from .actions import change_password, client_address, get_project, login, my_projects
from .context import COOKIE, LOGIN_CSRF_COOKIE, AppContext, Ctx, Id
from .deps import PageUser, tokens_match
from .schemas import PasswordChange

__all__ = ["router"]

router = APIRouter(route_class=StrictJSONRoute)


def _safe_next(nxt: str | None) -> str:
    """Only same-site paths after log-in (no open redirect)."""
    if not nxt or not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
        return "/"
    return nxt


def _login_form(ctx: AppContext, request: Request, next_path: str, status: int = 200, **values) -> HTMLResponse:
    """The log-in page with a fresh form token, set as a cookie the form must echo."""
    csrf = secrets.token_urlsafe(24)
    resp = ctx.render(request, "login.html", None, status=status, next=_safe_next(next_path), csrf_token=csrf, **values)
    resp.set_cookie(LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="strict", secure=ctx.secure_cookies, max_age=3600)
    return resp


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(request: Request, ctx: Ctx, next: str = "/"):  # noqa: A002
    # no message from the query string: a link could otherwise put any text on this page
    return _login_form(ctx, request, next)


@router.post("/login", include_in_schema=False)
def login_submit(
    request: Request,
    ctx: Ctx,
    username: str = Form(...),
    password: str = Form(...),
    csrf_token: str = Form(""),
    next: str = Form("/"),
):  # noqa: A002
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not (cookie and tokens_match(csrf_token, cookie)):
        raise HTTPException(403, "missing or wrong CSRF token; reload the log-in page")
    res = login(ctx, username, password, client_address(request), "browser")
    if res is None:
        return _login_form(ctx, request, next, status=401, error="Wrong user name or password.")
    _user, token, _csrf, _exp = res
    resp = RedirectResponse(_safe_next(next), status_code=303)
    resp.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=ctx.secure_cookies,
        max_age=int(ctx.session_ttl_s),
        path="/",
    )
    resp.delete_cookie(LOGIN_CSRF_COOKIE)
    return resp


@router.post("/logout", include_in_schema=False)
async def logout(p: PageUser, ctx: Ctx):
    await ctx.store.awrite(lambda c: delete_session(c, p.token_hash))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def home(request: Request, p: PageUser, ctx: Ctx):
    return ctx.render(request, "home.html", p, projects=my_projects(ctx, p))


@router.post("/account/password", include_in_schema=False)
def account_password(
    request: Request, p: PageUser, ctx: Ctx, current_password: str = Form(...), new_password: str = Form(...)
):
    try:
        PasswordChange(current_password=current_password, new_password=new_password)
        change_password(ctx, p, current_password, new_password, client_address(request))
    except (HTTPException, ValueError) as e:
        detail = getattr(e, "detail", None) or "the new password must have at least 8 characters"
        return ctx.render(
            request, "home.html", p, status=getattr(e, "status_code", 422), projects=my_projects(ctx, p), error=detail
        )
    return ctx.render(request, "home.html", p, projects=my_projects(ctx, p), msg="password changed")


@router.get("/label/{project_id}", response_class=HTMLResponse, include_in_schema=False)
def label_page(request: Request, project_id: Id, p: PageUser, ctx: Ctx):
    with ctx.store.read() as conn:
        allowed = may_label(conn, p.user_id, project_id)
    if not allowed:  # a deactivated project, or one restricted to other labelers
        raise HTTPException(404, f"no project {project_id} to label")
    return ctx.render(request, "label.html", p, project=get_project(ctx, project_id), flags=FLAGS)
