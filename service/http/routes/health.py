"""Health routes for orchestrators: liveness (the process serves) and readiness (outbox and SMTP)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.http.deps import DatabaseDep, DispatcherDep, SmtpProbeDep
from service.http.schemas import Readiness, ReadinessChecks
from service.outbox import OutboxUnavailable

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", summary="200 while the process serves requests")
async def live() -> dict[str, str]:
    return {"status": "pass"}


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "The outbox cannot be written"}},
    summary="pass: ready; warn: SMTP unreachable or the dispatcher down, mail is accepted and waits;"
    " fail: outbox unwritable",
)
async def ready(database: DatabaseDep, smtp_probe: SmtpProbeDep, dispatcher: DispatcherDep) -> JSONResponse:
    schema_version = None
    try:
        await database.check_writable()
        outbox_check = "pass"
        schema_version = await database.schema_version()
    except OutboxUnavailable:
        outbox_check = "fail"
    smtp_check = "pass" if await smtp_probe.check() else "fail"
    dispatcher_check = "pass" if dispatcher.running else "fail"
    overall = "fail" if outbox_check == "fail" else "warn" if "fail" in (smtp_check, dispatcher_check) else "pass"
    body = Readiness(
        status=overall,
        checks=ReadinessChecks(outbox=outbox_check, smtp=smtp_check, dispatcher=dispatcher_check),
        schema_version=schema_version,
    )
    return JSONResponse(body.model_dump(), status_code=503 if overall == "fail" else 200)
