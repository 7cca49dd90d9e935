"""The web page at /ui/ (activity, a notification, send, jobs, login), server-rendered with a little plain script.
Its routes are left out of the OpenAPI schema: they are a page, not the API (docs/ui.md)."""

from __future__ import annotations

from fastapi import APIRouter

from service.http.ui import activity, jobs, login, send

UPLOAD_PATH = jobs.UPLOAD_PATH

router = APIRouter()
for part in (login, activity, send, jobs):
    router.include_router(part.router)
