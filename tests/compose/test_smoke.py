"""Against the running stack (`make up`, then `make smoke`): a notification posted to the service shows up in the
mail inbox. `make test` skips it unless the stack answers; `make smoke` (pytest -m compose) fails instead.

NOTIFIER_URL and MAILHOG_URL point it at another host. The inbox may be MailHog or Mailpit (their APIs differ).
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import httpx
import pytest
import resend

NOTIFIER_URL = os.environ.get("NOTIFIER_URL", "http://localhost:8000").rstrip("/")
MAILHOG_URL = os.environ.get("MAILHOG_URL", "http://localhost:8025").rstrip("/")
DEADLINE_SECONDS = 30.0

pytestmark = pytest.mark.compose


@pytest.fixture
def client(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        down = [url for url in (f"{NOTIFIER_URL}/health/live", MAILHOG_URL) if not answers(client, url)]
        if down:
            message = f"compose stack not answering at {', '.join(down)}: run `make up` first"
            if "compose" in (request.config.getoption("markexpr") or ""):
                pytest.fail(message)
            pytest.skip(message)
        yield client


def answers(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def find_in_mailhog(client: httpx.Client, address: str) -> dict[str, str] | None:
    """Subject and raw body of the newest mail to `address`; None while there is none. Mailpit as a fallback."""
    response = client.get(f"{MAILHOG_URL}/api/v2/search", params={"kind": "to", "query": address})
    is_json = response.headers.get("content-type", "").startswith("application/json")
    if response.status_code == 200 and is_json and "items" in (body := response.json()):
        if not body["items"]:
            return None
        content: dict[str, Any] = body["items"][0]["Content"]
        return {"subject": content["Headers"]["Subject"][0], "body": content["Body"]}
    # Mailpit: search, then fetch the message for its parsed text and HTML.
    found = client.get(f"{MAILHOG_URL}/api/v1/search", params={"query": f"to:{address}"})
    found.raise_for_status()
    messages = found.json()["messages"]
    if not messages:
        return None
    message = client.get(f"{MAILHOG_URL}/api/v1/message/{messages[0]['ID']}").raise_for_status().json()
    return {"subject": message["Subject"], "body": message["Text"] + message["HTML"]}


def raw_from_inbox(client: httpx.Client, address: str) -> EmailMessage | None:
    """The newest mail to `address` as the inbox stored it, parsed; None while there is none."""
    response = client.get(f"{MAILHOG_URL}/api/v2/search", params={"kind": "to", "query": address})
    is_json = response.headers.get("content-type", "").startswith("application/json")
    if response.status_code == 200 and is_json and "items" in (body := response.json()):
        if not body["items"]:
            return None
        item = body["items"][0]
        # MailHog's own MIME view lists the parts too: the attachment's headers are among them.
        parts = (item.get("MIME") or item["Content"].get("MIME") or {}).get("Parts") or []
        assert any("attachment" in str(part.get("Headers", {}).get("Content-Disposition")) for part in parts), parts
        data = item["Raw"]["Data"].encode()
    else:
        found = client.get(f"{MAILHOG_URL}/api/v1/search", params={"query": f"to:{address}"})
        found.raise_for_status()
        if not (messages := found.json()["messages"]):
            return None
        data = client.get(f"{MAILHOG_URL}/api/v1/message/{messages[0]['ID']}/raw").raise_for_status().content
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def test_an_attachment_arrives_with_its_name_and_bytes(client: httpx.Client) -> None:
    token = uuid.uuid4().hex[:12]
    address = f"smoke-attachment-{token}@example.com"
    content = f"attachment of smoke test {token}\n".encode() + bytes(range(256))
    response = client.post(
        f"{NOTIFIER_URL}/v1/notifications",
        json={
            "to": [address],
            "subject": f"Smoke test attachment {token}",
            "text": "One file attached.",
            "attachments": [
                {
                    "filename": f"smoke-{token}.bin",
                    "content_type": "application/octet-stream",
                    "content": base64.b64encode(content).decode(),
                }
            ],
        },
    )
    assert response.status_code == 202, response.text

    deadline = time.monotonic() + DEADLINE_SECONDS
    while (message := raw_from_inbox(client, address)) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"no mail to {address} in {DEADLINE_SECONDS:.0f}s")
        time.sleep(0.2)

    [attachment] = message.iter_attachments()
    assert attachment.get_filename() == f"smoke-{token}.bin"
    assert attachment.get_content_type() == "application/octet-stream"
    assert attachment.get_content() == content


def test_a_notification_arrives_in_the_inbox(client: httpx.Client) -> None:
    token = uuid.uuid4().hex[:12]
    address = f"smoke-{token}@example.com"
    subject = f"Smoke test {token}"
    response = client.post(
        f"{NOTIFIER_URL}/v1/notifications",
        json={"to": [address], "subject": subject, "text": f"Hello from the smoke test {token}."},
    )
    assert response.status_code == 202, response.text
    notification_id = response.json()["id"]

    deadline = time.monotonic() + DEADLINE_SECONDS
    while (mail := find_in_mailhog(client, address)) is None:
        if time.monotonic() > deadline:
            status = client.get(f"{NOTIFIER_URL}/v1/notifications/{notification_id}").json()
            pytest.fail(f"no mail to {address} in {DEADLINE_SECONDS:.0f}s; the notification says: {status}")
        time.sleep(0.2)

    assert mail["subject"] == subject
    assert f"Hello from the smoke test {token}." in mail["body"]
    status = client.get(f"{NOTIFIER_URL}/v1/notifications/{notification_id}").json()
    assert status["status"] == "sent", status
    print(
        f"\nsmoke: mail to {address} arrived; see it at {MAILHOG_URL} (search for {token}),"
        f" its status at {NOTIFIER_URL}/v1/notifications/{notification_id}"
    )


def test_the_root_shows_the_activity_page(client: httpx.Client) -> None:
    response = client.get(f"{NOTIFIER_URL}/", follow_redirects=True)

    assert response.status_code == 200
    # The page itself, or its login when API_KEYS is set.
    assert response.url.path in ("/ui/", "/ui/login")
    assert "notification-service" in response.text
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_one_click_unsubscribe_headers_arrive_in_the_inbox(client: httpx.Client) -> None:
    # docs/api.md#headers, against the stack: the headers as MailHog (or Mailpit) received them.
    token = uuid.uuid4().hex[:12]
    address = f"smoke-headers-{token}@example.com"
    headers = {
        "List-Unsubscribe": f"<https://example.com/unsubscribe/{token}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "X-Campaign": f"smoke-{token}",
    }
    response = client.post(
        f"{NOTIFIER_URL}/v1/notifications",
        json={"to": [address], "subject": f"Headers {token}", "text": "Hi.", "headers": headers, "tags": ["smoke"]},
    )
    assert response.status_code == 202, response.text

    deadline = time.monotonic() + DEADLINE_SECONDS
    while not (received := headers_in_inbox(client, address)):
        if time.monotonic() > deadline:
            pytest.fail(f"no mail to {address} in {DEADLINE_SECONDS:.0f}s")
        time.sleep(0.2)
    for name, value in headers.items():
        assert received.get(name.lower()) == value, (name, received)
    tagged = client.get(f"{NOTIFIER_URL}/v1/notifications", params={"tag": "smoke"}).json()
    assert response.json()["id"] in [item["id"] for item in tagged["items"]]


def headers_in_inbox(client: httpx.Client, address: str) -> dict[str, str]:
    """The newest mail to `address`'s headers, by lower-cased name (first value); empty while there is none."""
    response = client.get(f"{MAILHOG_URL}/api/v2/search", params={"kind": "to", "query": address})
    if response.status_code == 200 and response.headers.get("content-type", "").startswith("application/json"):
        items = response.json().get("items")
        if items is not None:
            return {name.lower(): values[0] for name, values in items[0]["Content"]["Headers"].items()} if items else {}
    found = client.get(f"{MAILHOG_URL}/api/v1/search", params={"query": f"to:{address}"}).raise_for_status().json()
    if not found["messages"]:
        return {}
    raw = client.get(f"{MAILHOG_URL}/api/v1/message/{found['messages'][0]['ID']}/headers").raise_for_status().json()
    return {name.lower(): values[0] for name, values in raw.items()}


def test_a_mail_sent_with_resends_sdk_arrives_in_the_inbox(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/compat.md against the stack (compose sets COMPAT_APIS): Resend's own SDK, only its base URL changed.
    token = uuid.uuid4().hex[:12]
    address = f"smoke-resend-{token}@example.com"
    monkeypatch.setattr(resend, "api_key", os.environ.get("NOTIFIER_API_KEY", "re_smoke"))
    monkeypatch.setattr(resend, "api_url", f"{NOTIFIER_URL}/compat/resend")
    sent = resend.Emails.send(
        {
            "from": "Smoke <smoke@example.com>",
            "to": [address],
            "subject": f"Resend smoke {token}",
            "text": f"Sent with Resend's SDK {token}.",
        }
    )

    deadline = time.monotonic() + DEADLINE_SECONDS
    while (mail := find_in_mailhog(client, address)) is None:
        if time.monotonic() > deadline:
            pytest.fail(
                f"no mail to {address} in {DEADLINE_SECONDS:.0f}s; Resend's view: {resend.Emails.get(sent['id'])}"
            )
        time.sleep(0.2)
    assert mail["subject"] == f"Resend smoke {token}"
    assert f"Sent with Resend's SDK {token}." in mail["body"]
