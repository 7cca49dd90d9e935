"""Health routes for orchestrators: liveness (the process serves) and readiness (outbox and SMTP)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.http.deps import DatabaseDep, DispatcherDep, MetricsDep, SettingsDep, SmtpProbeDep
from service.http.schemas import CheckDetail, Readiness, ReadinessChecks, ReadinessDetails, SmtpCheckDetail
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
async def ready(
    database: DatabaseDep,
    smtp_probe: SmtpProbeDep,
    dispatcher: DispatcherDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> JSONResponse:
    schema_version = None
    outbox_reason = None
    try:
        await database.check_writable()
        outbox_check = "pass"
        schema_version = await database.schema_version()
    except OutboxUnavailable as exc:
        outbox_check = "fail"
        outbox_reason = f"cannot be written: {exc}"
    unwritten = metrics.unwritten_outcomes()
    if outbox_check == "pass" and unwritten:
        # The dispatcher's outcomes failed where this process' probe got through (another process, another size).
        outbox_check = "fail"
        outbox_reason = f"{unwritten} send outcomes could not be written yet (a full disk?); kept in memory"
    smtp = await smtp_probe.check_details()
    smtp_check = "pass" if smtp.ok else "fail"
    dispatcher_check = "pass" if dispatcher.running else "fail"
    overall = "fail" if outbox_check == "fail" else "warn" if "fail" in (smtp_check, dispatcher_check) else "pass"
    body = Readiness(
        status=overall,
        checks=ReadinessChecks(outbox=outbox_check, smtp=smtp_check, dispatcher=dispatcher_check),
        schema_version=schema_version,
        details=ReadinessDetails(
            outbox=CheckDetail(reason=outbox_reason),
            smtp=SmtpCheckDetail(
                reason=smtp.reason,
                error=smtp.error,
                tls="implicit" if settings.SMTP_TLS else "starttls" if settings.SMTP_STARTTLS else "none",
                verify_certs=settings.SMTP_VERIFY_CERTS,
                warnings=smtp.warnings,
            ),
            dispatcher=CheckDetail(reason=None if dispatcher.running else "not running (being restarted, or stuck)"),
        ),
    )
    return JSONResponse(body.model_dump(), status_code=503 if overall == "fail" else 200)
