"""`/v1/templates`: which templates exist and what they need; and turning a template request into a plain one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from service.http.deps import TemplatesDep
from service.intake.request import NotificationRequest
from service.intake.templates import TemplateRenderError, Templates

router = APIRouter(prefix="/v1/templates", tags=["templates"])


class TemplateInfo(BaseModel):
    name: str
    variables: list[str]


@router.get("", response_model=list[TemplateInfo], summary="Every template and the variables its `data` may hold")
async def list_templates(templates: TemplatesDep) -> list[TemplateInfo]:
    return [TemplateInfo(name=t.name, variables=list(t.variables)) for t in templates]


def _error(loc: tuple[str | int, ...], kind: str, msg: str, value: Any = None) -> dict[str, Any]:
    return {"type": kind, "loc": loc, "msg": msg, "input": value}


def render_request(body: NotificationRequest, templates: Templates) -> NotificationRequest:
    """A plain request (subject, text, html) from a template request, checked like any plain one; 422s name
    the missing variable or the field the rendered text broke. A plain request comes back as it is."""
    if body.template is None:
        return body
    template = templates.get(body.template)
    if template is None:
        known = ", ".join(templates.names()) or "none"
        raise RequestValidationError(
            [_error(("body", "template"), "unknown_template", f"no template {body.template!r} (known: {known})")]
        )
    try:
        rendered = template.render(body.data or {})
    except TemplateRenderError as exc:
        raise RequestValidationError(
            [_error(("body", "data"), "template_render", f"template {template.name!r}, {exc.part}: {exc.message}")]
        ) from None
    fields = body.model_dump(exclude={"template", "data", "subject", "text", "html"})
    try:
        return NotificationRequest.model_validate(
            {**fields, "subject": rendered.subject, "text": rendered.text, "html": rendered.html}
        )
    except ValidationError as exc:
        raise RequestValidationError(
            [
                _error(
                    ("body", "template", *error["loc"]),
                    error["type"],
                    f"rendered from template {template.name!r}: {error['msg']}",
                )
                for error in exc.errors(include_url=False)
            ]
        ) from None
