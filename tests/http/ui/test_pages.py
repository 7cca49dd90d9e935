"""The page through the real app: where it lives, what it shows, and that it acts through the API's own code —
the same 422 words, the same retry rules, the same job upload."""

from __future__ import annotations

import asyncio
import html
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.config import Settings
from service.http.ui.pages import MAIL_HTML_CSP, PAGE_CSP, STATIC, static_url
from tests.conftest import MAIL, Service, make_settings, running
from tests.http.test_schedule import in_seconds
from tests.http.ui.forms import csrf, text_of
from tests.smtp_sink import SmtpSink


@pytest.fixture
def settings(tmp_path: Path, smtp_sink: SmtpSink) -> Settings:
    # Uploads in the test's own folder, not in the checkout's data/jobs.
    return make_settings(tmp_path, smtp_sink.port, JOBS_DIR=tmp_path / "jobs")


PAGES = ["/ui/", "/ui/?status=sent&recipient=ada", "/ui/send", "/ui/jobs", "/ui/notifications/nope", "/ui/jobs/nope"]


async def test_the_root_leads_to_the_page(service: Service) -> None:
    response = await service.client.get("/")

    assert response.status_code == 302
    assert response.headers["location"] == "/ui/"


async def test_the_page_is_not_part_of_the_api_schema(service: Service) -> None:
    paths = (await service.client.get("/openapi.json")).json()["paths"]

    assert [path for path in paths if path == "/" or path.startswith("/ui")] == []


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_carries_its_security_headers(service: Service, path: str) -> None:
    response = await service.client.get(path)

    assert response.headers["content-security-policy"] == PAGE_CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["content-type"].startswith("text/html")


async def test_static_files_are_cached_by_their_content(service: Service) -> None:
    page = await service.client.get("/ui/")
    current = await service.client.get(static_url("ui.css"))
    stale = await service.client.get("/ui/static/000000000000/ui.css")

    assert static_url("ui.css") in page.text
    assert static_url("ui.js") in page.text
    assert current.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert current.content == STATIC["ui.css"].body
    assert stale.headers["cache-control"] == "no-cache"
    assert (await service.client.get("/ui/static/x/nothing.js")).status_code == 404


async def test_the_activity_counts_lists_and_charts_what_happened(service: Service, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.refuse["bounce@example.com"] = "550 5.1.1 no such user"
    sent = (await service.post(**MAIL)).json()["id"]
    failed = (await service.post(**{**MAIL, "to": ["bounce@example.com"], "subject": "Bounced"})).json()["id"]
    await service.wait_for_status(sent, "sent")
    await service.wait_for_status(failed, "failed")

    page = await service.client.get("/ui/")
    text = text_of(page)

    assert re.search(r'data-count="sent">\s*<span class="count-value">1<', page.text)
    assert re.search(r'data-count="failed">\s*<span class="count-value">1<', page.text)
    assert "1 sent" in text
    assert "1 failed" in text
    assert page.text.count('class="bar-sent"') == 1
    assert page.text.count('class="bar-failed"') == 1
    # Newest first, each with its status and a link to its page.
    assert page.text.index(f"/ui/notifications/{failed}") < page.text.index(f"/ui/notifications/{sent}")
    assert "550 5.1.1 no such user" in text


async def test_the_list_filters_by_status_and_recipient(service: Service) -> None:
    ada = (await service.post(**MAIL)).json()["id"]
    bob = (await service.post(**{**MAIL, "to": ["Bob <bob@example.com>"], "cc": ["carol@example.com"]})).json()["id"]
    await service.wait_for_status(bob, "sent")

    by_recipient = await service.client.get("/ui/", params={"recipient": "CAROL@"})
    by_status = await service.client.get("/ui/", params={"status": "failed"})
    nonsense = await service.client.get("/ui/", params={"status": "<b>", "cursor": "' OR 1=1"})

    assert bob in by_recipient.text
    assert ada not in by_recipient.text
    assert bob not in by_status.text
    assert "Nothing matches this filter" in text_of(by_status)
    assert nonsense.status_code == 200
    assert bob in nonsense.text


async def test_the_list_pages_by_cursor(service: Service) -> None:
    ids = [(await service.post(**{**MAIL, "subject": f"n{i}"})).json()["id"] for i in range(55)]

    first = await service.client.get("/ui/")
    older = re.search(r'rel="next" href="([^"]+)"', first.text)
    assert older, "no link to older notifications"
    second = await service.client.get(older.group(1).replace("&amp;", "&"))

    assert [i for i in ids if i in first.text] == ids[5:]
    assert [i for i in ids if i in second.text] == ids[:5]
    assert 'rel="next"' not in second.text


async def test_a_notification_page_shows_its_envelope_headers_and_ids(service: Service) -> None:
    body = {**MAIL, "cc": ["Carol <carol@example.com>"], "bcc": ["dave@example.com"], "html": "<p>Hi</p>"}
    created = (await service.post(**body, metadata={"order": "1042"})).json()
    await service.wait_for_status(created["id"], "sent")

    page = await service.client.get(f"/ui/notifications/{created['id']}")
    text = text_of(page)

    for expected in (created["message_id"], created["request_id"], "MAIL FROM notifier@example.com", "1042"):
        assert expected in text
    # Bcc is in the envelope, never in a header.
    assert "RCPT TO ada@example.com carol@example.com dave@example.com" in text
    assert "Cc Carol <carol@example.com>" in text
    assert "Bcc" not in text
    assert "Sent" in text
    assert "250 Message accepted for delivery" in text
    assert f'src="/ui/notifications/{created["id"]}/html" sandbox=""' in page.text


async def test_a_notification_page_shows_its_tags_and_its_own_headers(service: Service) -> None:
    headers = {"List-Unsubscribe": "<https://example.com/u/1>", "X-Campaign": "spring"}
    created = (await service.post(**MAIL, headers=headers, tags=["welcome", "spring"])).json()

    text = text_of(await service.client.get(f"/ui/notifications/{created['id']}"))

    assert "tags welcome spring" in text
    assert "List-Unsubscribe <https://example.com/u/1>" in text
    assert "X-Campaign spring" in text


async def test_a_notification_page_lists_its_attachments(service: Service) -> None:
    logo = {"filename": "logo <b>.png", "content_type": "image/png", "content": "iVBORw0KGgo=", "content_id": "logo"}
    created = (await service.post(**MAIL, html='<img src="cid:logo">', attachments=[logo])).json()

    page = await service.client.get(f"/ui/notifications/{created['id']}")

    assert "logo <b>.png image/png, 8 bytes, inline as cid:logo" in text_of(page)
    assert "logo &lt;b&gt;.png" in page.text


async def test_a_notification_page_shows_every_attempt_from_its_history(service: Service, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.data_replies.append("451 4.3.0 try again later")
    created = (await service.post(**MAIL)).json()
    await service.wait_for_status(created["id"], "sent")

    text = text_of(await service.client.get(f"/ui/notifications/{created['id']}"))

    retried, sent = text.index("Attempt failed, tried again later"), text.index("Sent")
    assert retried < sent
    assert "451 4.3.0 try again later" in text
    assert "250 Message accepted for delivery" in text


async def test_the_html_part_is_served_under_a_policy_that_runs_and_fetches_nothing(service: Service) -> None:
    html = '<p>Hi</p><script>alert(1)</script><img src="https://tracker.example/p.gif">'
    with_html = (await service.post(**{**MAIL, "html": html})).json()["id"]
    text_only = (await service.post(**MAIL)).json()["id"]

    response = await service.client.get(f"/ui/notifications/{with_html}/html")
    missing = await service.client.get(f"/ui/notifications/{text_only}/html")

    assert response.text == html
    assert response.headers["content-security-policy"] == MAIL_HTML_CSP
    assert "script-src" not in MAIL_HTML_CSP
    assert "default-src 'none'" in MAIL_HTML_CSP
    assert "sandbox" in MAIL_HTML_CSP
    assert missing.status_code == 404


async def test_the_send_form_accepts_a_mail_the_apis_way(service: Service, smtp_sink: SmtpSink) -> None:
    form = {
        "from": "Example Billing <billing@example.com>",
        "to": 'ada@example.com, "Lovelace, Ada" <ada.l@example.com>',
        "cc": "carol@example.com",
        "mode": "write",
        "subject": "From the page",
        "text": "Hello",
        "html": "",
        "csrf": await csrf(service.client),
    }
    response = await service.client.post("/ui/send", data=form)

    assert response.status_code == 303
    notification_id = response.headers["location"].rpartition("/")[2]
    status = await service.wait_for_status(notification_id, "sent")
    assert status["to"] == ["ada@example.com", '"Lovelace, Ada" <ada.l@example.com>']
    assert status["cc"] == ["carol@example.com"]
    assert status["request_id"]
    [mail] = await smtp_sink.wait_for(1)
    assert mail.message["Subject"] == "From the page"
    assert mail.message["From"] == "Example Billing <billing@example.com>"
    assert mail.mail_from == "billing@example.com"


async def test_the_send_form_renders_a_template_with_its_variables(service: Service, smtp_sink: SmtpSink) -> None:
    form = {
        "to": "ada@example.com",
        "mode": "template",
        "template": "welcome",
        "data.welcome.first_name": "Ada",
        "data.welcome.email": "ada@example.com",
        "data.welcome.login_url": "https://example.com/login",
        "data.password-reset.first_name": "not this template's",
        "subject": "ignored in template mode",
        "csrf": await csrf(service.client),
    }
    response = await service.client.post("/ui/send", data=form)

    assert response.status_code == 303
    [mail] = await smtp_sink.wait_for(1)
    assert mail.message["Subject"] == "Welcome to Example, Ada!"


async def test_the_send_form_schedules_in_the_browsers_time_zone(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    # New York is UTC-5 in January and UTC-4 in July: the zone, not today's offset, decides the moment.
    year = datetime.now(UTC).year + 1
    moments = {f"{year}-01-15T09:30": f"{year}-01-15T14:30", f"{year}-07-15T09:30": f"{year}-07-15T13:30"}
    async with running(make_settings(tmp_path, smtp_sink.port, MAX_SCHEDULE_DAYS=800)) as service:
        for wall_clock, utc in moments.items():
            form = {"to": "ada@example.com", "mode": "write", "subject": "Later", "text": "x"}
            form |= {"send_at_local": wall_clock, "time_zone": "America/New_York", "csrf": await csrf(service.client)}
            response = await service.client.post("/ui/send", data=form)

            assert response.status_code == 303, text_of(response)
            status = await service.client.get(f"/v1/notifications/{response.headers['location'].rpartition('/')[2]}")
            assert status.json()["status"] == "scheduled"
            assert datetime.fromisoformat(status.json()["send_at"]) == datetime.fromisoformat(utc).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("form", "api_body", "field"),
    [
        (
            {"to": "ada@example.com, not-an-address", "subject": "Hi", "text": "x"},
            {"to": ["ada@example.com", "not-an-address"], "subject": "Hi", "text": "x"},
            "to",
        ),
        (
            {"to": "ada@example.com", "subject": "", "text": "x"},
            {"to": ["ada@example.com"], "subject": "", "text": "x"},
            "subject",
        ),
        ({"to": "ada@example.com", "subject": "Hi"}, {"to": ["ada@example.com"], "subject": "Hi"}, "form"),
        (
            {"to": "ada@example.com", "mode": "template", "template": "welcome"},
            {"to": ["ada@example.com"], "template": "welcome", "data": {}},
            "data",
        ),
        (
            {"to": "ada@example.com", "mode": "template", "template": "nope"},
            {"to": ["ada@example.com"], "template": "nope", "data": {}},
            "template",
        ),
        (
            {"to": "ada@example.com", "subject": "Hi", "text": "x", "send_at_local": "2999-01-01T09:00"},
            {"to": ["ada@example.com"], "subject": "Hi", "text": "x", "send_at": "2999-01-01T09:00:00+00:00"},
            "send_at",
        ),
        (
            {"from": "billing@elsewhere.example", "to": "ada@example.com", "subject": "Hi", "text": "x"},
            {"from": "billing@elsewhere.example", "to": ["ada@example.com"], "subject": "Hi", "text": "x"},
            "from",
        ),
    ],
    ids=["bad address", "empty subject", "no body", "missing variable", "unknown template", "too far ahead", "sender"],
)
async def test_a_refusal_is_shown_beside_its_field_in_the_apis_words(
    service: Service, form: dict[str, str], api_body: dict[str, object], field: str
) -> None:
    api = await service.client.post("/v1/notifications", json=api_body)
    assert api.status_code == 422
    words = [error["msg"] for error in api.json()["detail"]]

    page = await service.client.post("/ui/send", data={"mode": "write", **form, "csrf": await csrf(service.client)})

    assert page.status_code == 422
    errors = re.search(rf'<ul class="field-errors" id="{field}-errors">(.*?)</ul>', page.text, re.DOTALL)
    assert errors, f"no errors beside {field}: {text_of(page)}"
    shown = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", errors.group(1))).split())
    for message in words:
        assert " ".join(message.split()) in shown
    # What was typed is still there.
    assert 'value="ada@example.com' in page.text


async def test_retry_follows_the_apis_rules(service: Service, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.refuse["bounce@example.com"] = "550 5.1.1 no such user"
    failed = (await service.post(**{**MAIL, "to": ["bounce@example.com"]})).json()["id"]
    await service.wait_for_status(failed, "failed")
    page = await service.client.get(f"/ui/notifications/{failed}")
    assert ">Retry</button>" in page.text
    del smtp_sink.handler.refuse["bounce@example.com"]

    token = await csrf(service.client)
    retried = await service.client.post(f"/ui/notifications/{failed}/retry", data={"csrf": token})
    await service.wait_for_status(failed, "sent")
    again = await service.client.post(f"/ui/notifications/{failed}/retry", data={"csrf": token})
    api = await service.client.post(f"/v1/notifications/{failed}/retry")
    unknown = await service.client.post("/ui/notifications/nope/retry", data={"csrf": token})

    assert retried.status_code == 303
    assert retried.headers["location"] == f"/ui/notifications/{failed}"
    assert (again.status_code, api.status_code) == (409, 409)
    assert api.json()["detail"] in text_of(again)
    assert ">Retry</button>" not in again.text
    assert unknown.status_code == 404


async def test_cancel_follows_the_apis_rules(service: Service) -> None:
    scheduled = (await service.post(**MAIL, send_at=in_seconds(3600))).json()["id"]
    page = await service.client.get(f"/ui/notifications/{scheduled}")
    listed = await service.client.get("/ui/?status=scheduled")
    assert ">Cancel</button>" in page.text
    assert "badge-scheduled" in page.text

    token = await csrf(service.client)
    canceled = await service.client.post(f"/ui/notifications/{scheduled}/cancel", data={"csrf": token})
    again = await service.client.post(f"/ui/notifications/{scheduled}/cancel", data={"csrf": token})
    api = await service.client.post(f"/v1/notifications/{scheduled}/cancel")
    unknown = await service.client.post("/ui/notifications/nope/cancel", data={"csrf": token})

    assert scheduled in listed.text
    assert canceled.status_code == 303
    assert canceled.headers["location"] == f"/ui/notifications/{scheduled}"
    assert (again.status_code, api.status_code) == (409, 409)
    assert api.json()["detail"] in text_of(again)
    assert ">Cancel</button>" not in again.text
    assert "badge-canceled" in again.text
    assert unknown.status_code == 404


async def test_a_csv_job_is_uploaded_followed_and_its_errors_downloaded(service: Service) -> None:
    content = b"email,first_name,login_url\r\nada@example.com,Ada,https://x\r\nbad@@example.com,Bad,https://x\r\n"
    token = await csrf(service.client, "/ui/jobs")
    response = await service.client.post(
        "/ui/jobs", files={"file": ("people.csv", content, "text/csv")}, data={"template": "welcome", "csrf": token}
    )
    assert response.status_code == 303
    job_id = response.headers["location"].rpartition("/")[2]

    deadline = time.monotonic() + 20
    while "done" not in (page := await service.client.get(f"/ui/jobs/{job_id}")).text or "1 sent" not in text_of(page):
        assert time.monotonic() < deadline, text_of(page)
        await asyncio.sleep(0.05)
    errors_csv = await service.client.get(f"/ui/jobs/{job_id}/errors.csv")
    listing = await service.client.get("/ui/jobs")

    assert 'aria-valuemax="2" aria-valuenow="2"' in page.text
    assert "bad@@example.com" in text_of(page)
    assert errors_csv.text.splitlines()[0] == "row,email,reason"
    assert "bad@@example.com" in errors_csv.text
    assert f"/ui/jobs/{job_id}" in listing.text


async def test_a_refused_upload_says_why_beside_its_field(service: Service, tmp_path: Path) -> None:
    token = await csrf(service.client, "/ui/jobs")
    response = await service.client.post(
        "/ui/jobs",
        files={"file": ("people.csv", b"name\r\nAda\r\n", "text/csv")},
        data={"template": "welcome", "csrf": token},
    )
    forged = await service.client.post(
        "/ui/jobs",
        files={"file": ("people.csv", b"email\r\na@example.com\r\n", "text/csv")},
        data={"template": "welcome"},
    )

    assert response.status_code == 422
    assert "no `email` column" in text_of(response)
    assert 'id="file-errors"' in response.text
    assert forged.status_code == 403
    # Neither upload stays on disk.
    assert list((tmp_path / "jobs").glob("*.csv")) == []


async def test_an_upload_may_be_larger_than_a_request_body(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    # Like the API's upload, the page's streams to disk under MAX_UPLOAD_BYTES, not MAX_BODY_BYTES.
    settings = make_settings(tmp_path, smtp_sink.port, MAX_BODY_BYTES=1024, JOBS_DIR=tmp_path / "jobs")
    rows = "".join(f"person{i}@example.com,P{i},https://x\r\n" for i in range(100))
    async with running(settings) as service:
        token = await csrf(service.client, "/ui/jobs")
        response = await service.client.post(
            "/ui/jobs",
            files={"file": ("people.csv", f"email,first_name,login_url\r\n{rows}".encode(), "text/csv")},
            data={"template": "welcome", "csrf": token},
        )

    assert response.status_code == 303
