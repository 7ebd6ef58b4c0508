"""The feedback app's route table with the dependencies FastAPI runs for each route:

- every ``/api/admin/*`` and ``/admin*`` route requires the admin role (``api_admin`` or
  ``page_admin``);
- every unsafe route (not GET, HEAD, OPTIONS) requires a session, whose dependency also checks
  the CSRF token of a cookie session -- but the two log-ins, which have no session yet;
- the routes open without a session are exactly the listed ones;
- every JSON route parses strictly (``StrictJSONRoute``);
- a route allowed a body over ``MAX_BODY_BYTES`` (the file import) declares no body parameter,
  so FastAPI reads nothing before the admin check: the route reads it itself.

A router added later is held to the same rules: the checker reads the app, not a list of routes.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, File, Form
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import Mount

from rlhfkit.feedback.app import MAX_BODY_BYTES, create_app
from rlhfkit.feedback.http_hardening import StrictJSONRoute
from rlhfkit.feedback.web.deps import ADMIN_DEPENDENCIES, SESSION_DEPENDENCIES, page_user

SAFE = {"GET", "HEAD", "OPTIONS"}
LOG_INS = {("POST", "/login"), ("POST", "/api/auth/login")}
OPEN = {
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/login"),
    ("GET", "/healthz"),
    ("GET", "/api/tasks/next"),  # the 405 naming POST
    *LOG_INS,
}


def _dependants(dependant):
    yield dependant
    for sub in dependant.dependencies:
        yield from _dependants(sub)


def route_table(app: FastAPI) -> list[dict]:
    """One row per (method, path): the dependency functions it runs, its body limit, how many
    body parameters FastAPI parses before calling it, and its route class."""
    rows = []
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, Mount):
            rows.append({"method": "*", "path": route.path, "calls": set(), "mount": True})
            continue
        dependant = getattr(route, "dependant", None)
        nodes = list(_dependants(dependant)) if dependant is not None else []
        for method in sorted(route.methods or ()):
            if method == "HEAD" and "GET" in route.methods:
                continue  # the GET's own row covers it
            rows.append(
                {
                    "method": method,
                    "path": route.path,
                    "calls": {n.call for n in nodes[1:]},
                    "max_body": getattr(route, "max_body_size", None),
                    "body_params": sum(len(n.body_params) for n in nodes),
                    "api": isinstance(route.original_route, APIRoute),
                    "strict": isinstance(route.original_route, StrictJSONRoute),
                    "mount": False,
                }
            )
    return rows


def route_problems(app: FastAPI) -> list[str]:
    problems = []
    for r in route_table(app):
        key, where = (r["method"], r["path"]), f"{r['method']} {r['path']}"
        if r["mount"]:
            if r["path"] != "/static":
                problems.append(f"{r['path']}: an unexpected mount")
            continue
        calls = r["calls"]
        if (r["path"].startswith("/api/admin") or r["path"].startswith("/admin")) and not calls & set(
            ADMIN_DEPENDENCIES
        ):
            problems.append(f"{where}: no admin role")
        if not calls & set(SESSION_DEPENDENCIES):
            if r["method"] not in SAFE and key not in LOG_INS:
                problems.append(f"{where}: an unsafe route without a session")
            elif key not in OPEN:
                problems.append(f"{where}: open without a session")
        if r["api"] and not r["strict"]:
            problems.append(f"{where}: JSON not parsed strictly")
        if (
            r["api"]
            and (r["max_body"] is None or r["max_body"] > MAX_BODY_BYTES)
            and (r["body_params"] or not calls & set(ADMIN_DEPENDENCIES))
        ):
            problems.append(f"{where}: a body over {MAX_BODY_BYTES} bytes read before the admin check")
    return problems


def test_every_route_has_its_session_admin_role_and_body_rules(tmp_path):
    app = create_app(str(tmp_path / "f.db"))
    try:
        rows = {(r["method"], r["path"]): r for r in route_table(app)}
        # the table is the app's (not an empty list that would pass anything): the known routes are in it
        assert len([k for k in rows if k[1].startswith(("/api/", "/admin", "/login", "/label"))]) >= 35
        for key in [
            ("POST", "/api/admin/projects/{project_id}/import"),
            ("POST", "/admin/projects/{project_id}/import"),
            ("GET", "/admin"),
            ("PATCH", "/api/admin/users/{user_id}"),
            ("POST", "/api/tasks/{task_id}/label"),
            ("POST", "/logout"),
            ("GET", "/healthz"),
        ]:
            assert key in rows, key
        for path in ("/api/admin/projects/{project_id}/import", "/admin/projects/{project_id}/import"):
            assert rows[("POST", path)]["max_body"] == 50_000_000  # create_app's default max_import_bytes
        assert route_problems(app) == []
    finally:
        app.state.store.close()


def test_the_route_rules_find_a_router_that_forgets_them(tmp_path):
    """The checker itself: routes that leave out the admin role, the session, strict JSON or the
    body rule are each named."""
    app = create_app(str(tmp_path / "f.db"))
    careless = APIRouter(route_class=StrictJSONRoute)

    @careless.get("/admin/report")
    def report(p=Depends(page_user)):  # a session, but any labeler's
        return {}

    @careless.post("/api/notes")
    def notes(text: str = Form("")):  # no session at all
        return {}

    @careless.get("/api/stats")
    def stats():  # open to anyone
        return {}

    lax = APIRouter()

    @lax.post("/api/admin/bulk", max_body_size=10 * MAX_BODY_BYTES)
    def bulk(file: bytes = File(...), p=Depends(ADMIN_DEPENDENCIES[0])):  # parsed before the admin check
        return {}

    app.include_router(careless)
    app.include_router(lax)
    try:
        assert sorted(route_problems(app)) == sorted(
            [
                "GET /admin/report: no admin role",
                "POST /api/notes: an unsafe route without a session",
                "GET /api/stats: open without a session",
                "POST /api/admin/bulk: JSON not parsed strictly",
                f"POST /api/admin/bulk: a body over {MAX_BODY_BYTES} bytes read before the admin check",
            ]
        )
    finally:
        app.state.store.close()
