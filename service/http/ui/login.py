"""The page's doors: `/` leads to it, `/ui/login` trades an API key for a session cookie, `/ui/logout` ends it,
and `/ui/static/...` serves its stylesheet and script."""

from __future__ import annotations

import time
from typing import Annotated

import structlog
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException

from service.config import Settings
from service.http.auth import api_key_id, matching_key
from service.http.ui.access import (
    CSRF_FIELD,
    SESSION_COOKIE,
    SESSION_SECONDS,
    issue_session,
    read_access,
    set_cookie,
)
from service.http.ui.pages import PREFIX, STATIC, PageRoute, render, safe_next
from service.http.ui.throttle import LoginThrottle

log = structlog.get_logger("service.http.ui")

router = APIRouter(route_class=PageRoute, include_in_schema=False)


@router.get("/")
async def root() -> Response:
    return RedirectResponse(f"{PREFIX}/", status_code=302)


@router.get(f"{PREFIX}/login")
async def login_page(request: Request, target: Annotated[str | None, Query(alias="next")] = None) -> Response:
    access = read_access(request)
    request.state.ui_access = access
    if access.open or access.key_id is not None:
        return RedirectResponse(safe_next(target), status_code=303)
    return render(
        request, "login.html", {"next": safe_next(target), "problem": None, "session_hours": SESSION_SECONDS // 3600}
    )


@router.post(f"{PREFIX}/login")
async def login(request: Request) -> Response:
    access = read_access(request)
    request.state.ui_access = access
    form = await request.form()
    access.check_csrf(request, str(form.get(CSRF_FIELD) or ""))
    target = safe_next(str(form.get("next") or ""))
    settings: Settings = request.app.state.settings
    keys = settings.api_keys()
    if not keys:
        return RedirectResponse(target, status_code=303)
    throttle: LoginThrottle = request.app.state.login_throttle
    client = request.client.host if request.client else "unknown"
    if throttle.refused(client):
        log.warning("ui_login_throttled", client=client)
        wait = throttle.retry_after()
        problem = f"Too many wrong keys from this address: wait {wait} s before the next try."
        response = render(
            request,
            "login.html",
            {"next": target, "problem": problem, "session_hours": SESSION_SECONDS // 3600},
            status_code=429,
        )
        response.headers["Retry-After"] = str(wait)
        return response
    key = matching_key(str(form.get("key") or "").strip(), keys)
    if key is None:
        await throttle.failed(client)
        log.warning("ui_login_refused")
        problem = "That key is not one of the keys in API_KEYS."
        return render(
            request,
            "login.html",
            {"next": target, "problem": problem, "session_hours": SESSION_SECONDS // 3600},
            status_code=401,
        )
    log.info("ui_logged_in", api_key_id=api_key_id(key))
    response = RedirectResponse(target, status_code=303)
    set_cookie(response, SESSION_COOKIE, issue_session(key, time.time()), secure=access.secure, max_age=SESSION_SECONDS)
    return response


@router.post(f"{PREFIX}/logout")
async def logout(request: Request) -> Response:
    access = read_access(request)
    request.state.ui_access = access
    form = await request.form()
    access.check_csrf(request, str(form.get(CSRF_FIELD) or ""))
    if access.key_id is not None:
        log.info("ui_logged_out", api_key_id=access.key_id)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/ui", httponly=True, samesite="strict", secure=access.secure)
    return response


@router.get(f"{PREFIX}/static/{{digest}}/{{name}}")
async def static_file(digest: str, name: str) -> Response:
    found = STATIC.get(name)
    if found is None:
        raise HTTPException(404, f"no static file {name!r}")
    # An old digest (a page cached before an upgrade) still gets the file, but not for a year.
    cache = "public, max-age=31536000, immutable" if digest == found.digest else "no-cache"
    return Response(found.body, media_type=found.media_type, headers={"Cache-Control": cache})
