"""The web page's frame: its Jinja2 templates (every value autoescaped), its static files under content-hashed
URLs, the security headers on every answer, and the route class that turns a refusal into a page."""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from service.http.ui.access import LoginRequired, read_access
from service.outbox import OutboxUnavailable

HERE = Path(__file__).parent
PREFIX = "/ui"

# Scripts and styles only from this service's own files (no inline script can run, whatever a value holds);
# the mail's HTML is framed from its own route, under MAIL_HTML_CSP.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " form-action 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# A mail's HTML is the sender's: no script, nothing fetched from anywhere (no tracking pixel fires), its own
# inline styles only; `sandbox` gives it an origin of its own even when opened outside its frame.
MAIL_HTML_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; base-uri 'none';"
    " frame-ancestors 'self'; sandbox"
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    media_type: str
    digest: str


def _load_static() -> dict[str, StaticFile]:
    files = {}
    for path in sorted((HERE / "static").iterdir()):
        body = path.read_bytes()
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        files[path.name] = StaticFile(body, media_type, hashlib.sha256(body).hexdigest()[:12])
    return files


STATIC = _load_static()


def static_url(name: str) -> str:
    """A file's URL with its content's hash in it: cached for a year, and a new version is a new URL."""
    return f"{PREFIX}/static/{STATIC[name].digest}/{name}"


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def iso_time(timestamp: float) -> str:
    return _utc(timestamp).isoformat(timespec="seconds").replace("+00:00", "Z")


def clock_time(timestamp: float) -> str:
    """The time of day in UTC (the page's script shows it in the reader's own zone)."""
    return _utc(timestamp).strftime("%H:%M:%S")


def full_time(timestamp: float) -> str:
    return _utc(timestamp).strftime("%Y-%m-%d %H:%M:%S UTC")


environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,
)
environment.globals["static_url"] = static_url
environment.filters.update(iso_time=iso_time, clock_time=clock_time, full_time=full_time)
environment.filters["number"] = lambda value: f"{value:,}"


def render(
    request: Request, template: str, context: dict[str, Any] | None = None, *, status_code: int = 200
) -> Response:
    access = getattr(request.state, "ui_access", None) or read_access(request)
    body = environment.get_template(template).render(
        access=access, path=request.url.path, request_id=getattr(request.state, "request_id", None), **(context or {})
    )
    response = HTMLResponse(body, status_code, headers={"Cache-Control": "no-store"})
    access.set_cookies(response)
    return response


def error_page(request: Request, status_code: int, detail: str) -> Response:
    return render(request, "error.html", {"status_code": status_code, "detail": detail}, status_code=status_code)


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path of this page only, never another site (`//evil`, `javascript:`)."""
    if not target:
        return f"{PREFIX}/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith(f"{PREFIX}/") or "\\" in target or "//" in target:
        return f"{PREFIX}/"
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in target):
        return f"{PREFIX}/"
    return target


def login_url(request: Request) -> str:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = safe_next(here) if request.method == "GET" else f"{PREFIX}/"
    return f"{PREFIX}/login?next={quote(target, safe='/')}"


class PageRoute(APIRoute):
    """The page's routes: a refusal becomes a page (or the login page), never the API's JSON, and every answer
    carries the security headers. Only the page's routes pay for this, not the API's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_page(request: Request) -> Response:
            try:
                response = await handle(request)
            except LoginRequired:
                response = RedirectResponse(login_url(request), status_code=303)
            except HTTPException as exc:
                response = error_page(request, exc.status_code, str(exc.detail))
            except RequestValidationError as exc:
                response = error_page(request, 422, "; ".join(str(error["msg"]) for error in exc.errors()))
            except OutboxUnavailable as exc:
                response = error_page(request, 503, f"the outbox cannot be read or written right now ({exc})")
            for name, value in PAGE_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return handle_page
