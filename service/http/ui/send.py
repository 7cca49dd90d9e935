"""The send form: a notification written by hand or from a template, accepted exactly as POST /v1/notifications
accepts one; a refusal is shown next to its field in the API's own 422 words."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from pydantic import ValidationError
from starlette.datastructures import FormData

from service.http.limits import queue_full_detail
from service.http.ui.access import CSRF_FIELD, Access, require_access
from service.http.ui.backend import Backend
from service.http.ui.pages import PREFIX, PageRoute, render
from service.intake.request import NotificationRequest, split_addresses
from service.outbox import QueueFull

router = APIRouter(prefix=PREFIX, route_class=PageRoute, include_in_schema=False)
AccessDep = Annotated[Access, Depends(require_access)]

FIELDS = ("from", "to", "cc", "subject", "text", "html", "template", "data", "send_at")


def field_errors(errors: list[Any], body: Mapping[str, Any], fields: tuple[str, ...] = FIELDS) -> dict[str, list[str]]:
    """The API's 422 `detail` entries by the form field they belong to ("form" for the request as a whole)."""
    found: dict[str, list[str]] = {}
    for error in jsonable_encoder(errors):
        loc = [part for part in error.get("loc", []) if part != "body"]
        field = str(loc[0]) if loc and loc[0] in fields else "form"
        message = str(error.get("msg", ""))
        if field in ("to", "cc") and len(loc) > 1 and isinstance(loc[1], int) and loc[1] < len(body.get(field, [])):
            message = f"“{body[field][loc[1]]}”: {message}"
        found.setdefault(field, []).append(message)
    return found


def request_body(form: FormData) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON body the API would have been sent, and the form's values as typed (to fill the form again)."""
    values = {name: str(value) for name, value in form.multi_items() if isinstance(value, str)}
    # One address after another, split at commas and line ends ("Lovelace, Ada" <ada@…> stays whole).
    body: dict[str, Any] = {
        "to": split_addresses(values.get("to", ""), ",\n"),
        "cc": split_addresses(values.get("cc", ""), ",\n"),
    }
    if sender := values.get("from", "").strip():
        body["from"] = sender
    if values.get("mode") == "template":
        template = values.get("template", "")
        prefix = f"data.{template}."
        body["template"] = template
        body["data"] = {
            name.removeprefix(prefix): value for name, value in values.items() if name.startswith(prefix) and value
        }
    else:
        body["subject"] = values.get("subject", "")
        for part in ("text", "html"):
            if values.get(part, "").strip():
                body[part] = values[part]
    if when := values.get("send_at_local", "").strip():
        body["send_at"] = send_at(when, values.get("time_zone", ""))
    return body, values


def send_at(local: str, time_zone: str) -> str:
    """The form's wall-clock time (`datetime-local`, no offset) in the browser's IANA zone, which the page's
    script puts beside it, as the RFC 3339 string the API takes; UTC without the script. The zone, not a fixed
    offset, so that a time across a daylight-saving change from today is still the one the user meant."""
    try:
        moment = datetime.fromisoformat(local)
    except ValueError:
        return local  # the API's own refusal says what is wrong with it, beside the field
    try:
        zone: tzinfo = ZoneInfo(time_zone) if time_zone else UTC
    except (ValueError, ZoneInfoNotFoundError):
        zone = UTC
    return moment.replace(tzinfo=zone).isoformat()


def _form_page(
    request: Request, values: dict[str, str], errors: dict[str, list[str]], status_code: int = 200
) -> Response:
    backend = Backend(request)
    return render(
        request,
        "send.html",
        {"templates": backend.mail_templates(), "values": values, "errors": errors},
        status_code=status_code,
    )


@router.get("/send")
async def send_form(request: Request, access: AccessDep) -> Response:
    return _form_page(request, {"mode": "write"}, {})


@router.post("/send")
async def send(request: Request, access: AccessDep, background: BackgroundTasks) -> Response:
    form = await request.form()
    access.check_csrf(request, str(form.get(CSRF_FIELD) or ""))
    body, values = request_body(form)
    try:
        notification = await Backend(request).send(
            NotificationRequest.model_validate(body), request.state.request_id, background
        )
    except ValidationError as exc:
        return _form_page(request, values, field_errors(exc.errors(include_url=False), body), 422)
    except RequestValidationError as exc:
        return _form_page(request, values, field_errors(list(exc.errors()), body), 422)
    except QueueFull as exc:
        return _form_page(request, values, {"form": [queue_full_detail(exc)]}, 429)
    return RedirectResponse(f"{PREFIX}/notifications/{notification.id}", status_code=303, background=background)
