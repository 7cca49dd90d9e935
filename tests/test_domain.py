"""The shared words: a Refusal reads back from the JSON it is stored and shown as, and the API's status is the
domain's Status, described inline in the OpenAPI document as it always was."""

from __future__ import annotations

from pathlib import Path

from service.domain import Refusal, Status
from service.main import create_app
from tests.conftest import make_settings


def test_a_refusal_is_stored_and_shown_as_address_code_and_message() -> None:
    refusal = Refusal(address="grey@example.com", code=451, message="greylisted")

    assert refusal.to_json() == {"address": "grey@example.com", "code": 451, "message": "greylisted"}
    assert Refusal.from_json(refusal.to_json()) == refusal


def test_4xx_is_refused_for_now_and_5xx_for_good() -> None:
    assert [(r.for_now, r.for_good) for r in (Refusal("a", 451, ""), Refusal("b", 550, ""), Refusal("c", 0, ""))] == [
        (True, False),
        (False, True),
        (False, False),
    ]


def test_the_apis_status_is_the_domains_inline_enum(tmp_path: Path) -> None:
    schema = create_app(make_settings(tmp_path, 1025)).openapi()

    status = {"enum": [s.value for s in Status], "title": "Status", "type": "string"}
    assert schema["components"]["schemas"]["NotificationStatus"]["properties"]["status"] == status
    assert schema["components"]["schemas"]["RecentError"]["properties"]["status"] == {
        **status,
        "description": "queued or sending: being retried; failed: given up",
    }
    [listing] = [p for p in schema["paths"]["/v1/notifications"]["get"]["parameters"] if p["name"] == "status"]
    assert listing["schema"]["anyOf"][0] == {"enum": [s.value for s in Status], "type": "string"}
    # Not a shared component: a generated client gets no new type.
    assert "Status" not in schema["components"]["schemas"]
