"""`/v1/templates`: which templates exist and what their `data` may hold (intake renders them)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from service.http.deps import TemplatesDep

router = APIRouter(prefix="/v1/templates", tags=["templates"])


class TemplateInfo(BaseModel):
    name: str
    variables: list[str]


@router.get("", response_model=list[TemplateInfo], summary="Every template and the variables its `data` may hold")
async def list_templates(templates: TemplatesDep) -> list[TemplateInfo]:
    return [TemplateInfo(name=t.name, variables=list(t.variables)) for t in templates]
