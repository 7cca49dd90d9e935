"""The web page at /ui/: activity, one notification, send, jobs, login. Server-rendered (Jinja2) with a little
plain script; it reaches the outbox, the intake and the dispatcher only through `backend`.

Its routes are left out of the OpenAPI schema: they are a page, not the API.
"""

from __future__ import annotations

from fastapi import APIRouter

from service.http.ui import activity, jobs, login, send

UPLOAD_PATH = jobs.UPLOAD_PATH

router = APIRouter()
for part in (login, activity, send, jobs):
    router.include_router(part.router)
