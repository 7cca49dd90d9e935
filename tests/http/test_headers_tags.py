"""`headers` and `tags` through the real app: every refusal a 422 naming the field, the headers in the mail the
SMTP server receives (single, batch, template, fast path and stdlib path), tags echoed, filtered with `?tag=`,
given to a CSV job, and counted under METRIC_TAGS' bounded `tag` label."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings
from service.intake.request import ONE_CLICK
from tests.conftest import MAIL, Service, make_settings, running
from tests.http.test_jobs import wait_for_job
from tests.http.test_metrics import scrape, value, wait_for_metric
from tests.smtp_sink import SmtpSink

ONE_CLICK_HEADERS = {"List-Unsubscribe": "<https://example.com/unsubscribe/42>", "List-Unsubscribe-Post": ONE_CLICK}


async def test_headers_arrive_at_the_smtp_server_and_tags_are_echoed(service: Service, smtp_sink: SmtpSink) -> None:
    headers = {
        # In lower case: stored and sent in the usual spelling.
        "list-unsubscribe": "<https://example.com/unsubscribe/42?u=ada>, <mailto:unsubscribe@example.com>",
        "List-Unsubscribe-Post": ONE_CLICK,
        "X-Campaign": "spring-2026",
        "Precedence": "bulk",
        "Auto-Submitted": "auto-generated",
        "In-Reply-To": "<order-17@shop.example.com>",
        "References": "<order-17@shop.example.com>",
        "List-Id": "Example news <news.example.com>",
        "X-Long": "word " * 150,
        "X-Team": "Équipe « rouge »",
    }
    response = await service.post(**MAIL, headers=headers, tags=["welcome", "billing", "welcome"])

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["tags"] == ["welcome", "billing"]
    assert list(body["headers"]) == [
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "X-Campaign",
        "Precedence",
        "Auto-Submitted",
        "In-Reply-To",
        "References",
        "List-Id",
        "X-Long",
        "X-Team",
    ]
    await service.wait_for_status(body["id"], "sent")
    [received] = await smtp_sink.wait_for(1)
    message = received.message
    # Too long for one line: folded at a space (RFC 5322 2.2.3), read back unfolded.
    assert message["List-Unsubscribe"] == headers["list-unsubscribe"]
    assert b"\r\nList-Unsubscribe: <https://example.com/unsubscribe/42?u=ada>,\r\n <mailto:" in received.data
    for name in ("List-Unsubscribe-Post", "X-Campaign", "Precedence", "Auto-Submitted", "In-Reply-To", "List-Id"):
        assert message[name] == headers[name], name
    assert message["X-Long"] == headers["X-Long"]
    assert message["X-Team"] == headers["X-Team"]
    # The mail's own headers are still there once each.
    for name in ("From", "To", "Subject", "Date", "Message-ID"):
        assert len(message.get_all(name) or []) == 1, name
    got = (await service.client.get(f"/v1/notifications/{body['id']}")).json()
    assert (got["headers"], got["tags"]) == (body["headers"], ["welcome", "billing"])


async def test_a_long_unsubscribe_url_arrives_whole_never_encoded(service: Service, smtp_sink: SmtpSink) -> None:
    # The stdlib would write a word longer than a line as RFC 2047 encoded words: no receiver reads a URI in those.
    url = "<https://example.com/unsubscribe?token=" + "t" * 200 + ">"
    longest = {"X-Longest": "x" * (998 - len("X-Longest: "))}
    response = await service.post(**MAIL, headers={"List-Unsubscribe": f"{url}, <mailto:u@example.com>", **longest})
    assert response.status_code == 202, response.text
    await service.wait_for_status(response.json()["id"], "sent")
    [received] = await smtp_sink.wait_for(1)

    assert f"\r\nList-Unsubscribe: {url},\r\n <mailto:u@example.com>\r\n".encode() in received.data
    assert b"=?" not in received.data
    assert max(len(line) for line in received.data.split(b"\r\n")) == 998


async def test_short_plain_headers_take_the_fast_path_and_arrive(service: Service, smtp_sink: SmtpSink) -> None:
    response = await service.post(**MAIL, headers={**ONE_CLICK_HEADERS, "X-Campaign": "spring"}, html="<p>Hi</p>")
    await service.wait_for_status(response.json()["id"], "sent")
    [received] = await smtp_sink.wait_for(1)

    assert b"\r\nList-Unsubscribe: <https://example.com/unsubscribe/42>\r\n" in received.data
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in received.data
    assert received.message["X-Campaign"] == "spring"


def many_headers(count: int) -> dict[str, str]:
    return {f"X-H{i}": "v" for i in range(count)}


REFUSED: dict[str, tuple[dict[str, Any], list[str | int], str]] = {
    "bcc-header": ({"headers": {"Bcc": "eve@example.com"}}, ["body", "headers", "Bcc"], "cannot be set"),
    "from-header": ({"headers": {"from": "eve@example.com"}}, ["body", "headers", "from"], "cannot be set"),
    "content-type": ({"headers": {"Content-Type": "text/html"}}, ["body", "headers", "Content-Type"], "cannot be set"),
    "dkim-signature": ({"headers": {"DKIM-Signature": "v=1"}}, ["body", "headers", "DKIM-Signature"], "cannot be set"),
    "crlf-in-name": (
        {"headers": {"X-A\r\nBcc": "eve@example.com"}},
        ["body", "headers", "X-A\r\nBcc"],
        "cannot be set",
    ),
    "colon-in-name": ({"headers": {"X-A: b": "c"}}, ["body", "headers", "X-A: b"], "cannot be set"),
    "space-in-name": ({"headers": {"X-A B": "c"}}, ["body", "headers", "X-A B"], "cannot be set"),
    "non-ascii-name": ({"headers": {"X-Über": "c"}}, ["body", "headers", "X-Über"], "cannot be set"),
    "bare-x": ({"headers": {"X-": "c"}}, ["body", "headers", "X-"], "cannot be set"),
    "crlf-in-value": (
        {"headers": {"X-A": "a\r\nBcc: eve@example.com"}},
        ["body", "headers", "X-A"],
        "CR, LF",
    ),
    "lf-in-value": ({"headers": {"X-A": "a\nBcc: eve@example.com"}}, ["body", "headers", "X-A"], "CR, LF"),
    "nel-in-value": ({"headers": {"X-A": "a\x85b"}}, ["body", "headers", "X-A"], "CR, LF"),
    "u2028-in-value": ({"headers": {"X-A": "a\u2028b"}}, ["body", "headers", "X-A"], "CR, LF"),
    "nul-in-value": ({"headers": {"X-A": "a\x00b"}}, ["body", "headers", "X-A"], "CR, LF"),
    "encoded-word": (
        {"headers": {"X-A": "=?utf-8?q?hi=0D=0ABcc:_eve@example.com?="}},
        ["body", "headers", "X-A"],
        "encoded word",
    ),
    "empty-value": ({"headers": {"X-A": " "}}, ["body", "headers", "X-A"], "empty"),
    "number-value": ({"headers": {"X-A": 3}}, ["body", "headers", "X-A"], "string"),
    "long-value": ({"headers": {"X-A": "a" * (998 - len("X-A: ") + 1)}}, ["body", "headers", "X-A"], "998"),
    "twice-by-case": ({"headers": {"X-A": "1", "x-a": "2"}}, ["body", "headers", "X-A"], "given 2 times"),
    "too-many": ({"headers": many_headers(21)}, ["body", "headers"], "at most 20"),
    "not-an-object": ({"headers": ["X-A: b"]}, ["body", "headers"], "dictionary"),
    "unsubscribe-not-a-uri": (
        {"headers": {"List-Unsubscribe": "https://example.com/u"}},
        ["body", "headers", "List-Unsubscribe"],
        "angle brackets",
    ),
    "one-click-alone": (
        {"headers": {"List-Unsubscribe-Post": ONE_CLICK}},
        ["body", "headers", "List-Unsubscribe-Post"],
        "https",
    ),
    "one-click-mailto-only": (
        {"headers": {"List-Unsubscribe": "<mailto:u@example.com>", "List-Unsubscribe-Post": ONE_CLICK}},
        ["body", "headers", "List-Unsubscribe-Post"],
        "https",
    ),
    "one-click-other-value": (
        {"headers": {**ONE_CLICK_HEADERS, "List-Unsubscribe-Post": "yes"}},
        ["body", "headers", "List-Unsubscribe-Post"],
        "RFC 8058",
    ),
    "upper-case-tag": ({"tags": ["Welcome"]}, ["body", "tags", 0], "pattern"),
    "empty-tag": ({"tags": ["ok", ""]}, ["body", "tags", 1], "pattern"),
    "long-tag": ({"tags": ["t" * 65]}, ["body", "tags", 0], "pattern"),
    "space-tag": ({"tags": ["a b"]}, ["body", "tags", 0], "pattern"),
    "comma-tag": ({"tags": ["a,b"]}, ["body", "tags", 0], "pattern"),
    "crlf-tag": ({"tags": ["a\r\nb"]}, ["body", "tags", 0], "pattern"),
    "too-many-tags": ({"tags": [f"t{i}" for i in range(11)]}, ["body", "tags"], "at most 10"),
    "tags-not-a-list": ({"tags": "welcome"}, ["body", "tags"], "list"),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_a_bad_header_or_tag_is_a_422_naming_it(case: str, service: Service, smtp_sink: SmtpSink) -> None:
    fields, loc, words = REFUSED[case]

    response = await service.post(**MAIL, **fields)

    assert response.status_code == 422, response.text
    # A header given twice is refused in both places; everything else once.
    error = response.json()["detail"][0]
    assert error["loc"] == loc
    assert words.lower() in error["msg"].lower(), error["msg"]
    assert (await service.client.get("/v1/notifications")).json()["items"] == []


async def test_a_batch_takes_headers_and_tags_item_by_item(service: Service, smtp_sink: SmtpSink) -> None:
    response = await service.client.post(
        "/v1/notifications/batch",
        json={
            "notifications": [
                {**MAIL, "headers": ONE_CLICK_HEADERS, "tags": ["news"]},
                {**MAIL, "headers": {"Sender": "eve@example.com"}},
                {**MAIL, "to": ["grace@example.com"], "tags": ["news", "billing"]},
            ]
        },
    )

    assert response.status_code == 202, response.text
    first, refused, third = response.json()["items"]
    assert refused["error"]["detail"][0]["loc"] == ["headers", "Sender"]
    await service.wait_for_status(first["id"], "sent")
    await service.wait_for_status(third["id"], "sent")
    [mail] = smtp_sink.to("ada@example.com")
    assert mail.message["List-Unsubscribe-Post"] == ONE_CLICK
    listed = (await service.client.get("/v1/notifications", params={"tag": "news"})).json()
    assert [item["id"] for item in listed["items"]] == [third["id"], first["id"]]


async def test_a_template_request_keeps_its_headers_and_tags(service: Service, smtp_sink: SmtpSink) -> None:
    response = await service.post(
        to=["grace@example.com"],
        template="welcome",
        data={"first_name": "Grace", "email": "grace@example.com", "login_url": "https://example.com/login"},
        headers={"X-Campaign": "onboarding"},
        tags=["welcome"],
    )

    assert response.status_code == 202, response.text
    assert response.json()["tags"] == ["welcome"]
    await service.wait_for_status(response.json()["id"], "sent")
    [received] = await smtp_sink.wait_for(1)
    assert received.message["Subject"] == "Welcome to Example, Grace!"
    assert received.message["X-Campaign"] == "onboarding"


async def test_the_tag_filter_pages_and_combines_with_status(service: Service, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.data_replies.append("550 5.7.1 rejected by policy")
    failed = (await service.post(**MAIL, tags=["billing"])).json()["id"]
    await service.wait_for_status(failed, "failed")
    ids = [(await service.post(**MAIL, tags=["billing", f"n{i}"])).json()["id"] for i in range(3)]
    await service.post(**MAIL, tags=["welcome"])
    await service.post(**MAIL)
    for notification_id in ids:
        await service.wait_for_status(notification_id, "sent")

    first = (await service.client.get("/v1/notifications", params={"tag": "billing", "limit": 2})).json()
    second = (
        await service.client.get(
            "/v1/notifications", params={"tag": "billing", "limit": 2, "cursor": first["next_cursor"]}
        )
    ).json()
    assert [item["id"] for item in first["items"] + second["items"]] == [*reversed(ids), failed]
    assert second["next_cursor"] is None
    only_failed = (await service.client.get("/v1/notifications", params={"tag": "billing", "status": "failed"})).json()
    assert [item["id"] for item in only_failed["items"]] == [failed]
    assert (await service.client.get("/v1/notifications", params={"tag": "nobody"})).json()["items"] == []

    bad = await service.client.get("/v1/notifications", params={"tag": "Not A Tag"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "tag"]


async def test_a_csv_job_gives_its_tags_to_every_row(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, JOBS_DIR=tmp_path / "jobs")
    async with running(settings) as service:
        response = await service.client.post(
            "/v1/jobs",
            files={
                "file": (
                    "people.csv",
                    b"email,first_name,login_url\nada@example.com,Ada,https://e.com/l\ngrace@example.com,Grace,https://e.com/l\n",
                )
            },
            data={"template": "welcome", "tags": "spring, newsletter,spring"},
        )
        assert response.status_code == 202, response.text
        assert response.json()["tags"] == ["spring", "newsletter"]
        done = await wait_for_job(service, response.json()["id"], "done", "failed")
        assert (done["status"], done["accepted"], done["tags"]) == ("done", 2, ["spring", "newsletter"])

        listed = (await service.client.get("/v1/notifications", params={"tag": "newsletter"})).json()
        assert sorted(item["to"][0] for item in listed["items"]) == ["ada@example.com", "grace@example.com"]
        assert {tuple(item["tags"]) for item in listed["items"]} == {("spring", "newsletter")}

        for tags, words in (("Spring", "not a tag"), (",".join(f"t{i}" for i in range(11)), "at most 10")):
            refused = await service.client.post(
                "/v1/jobs",
                files={"file": ("people.csv", b"email\nada@example.com\n")},
                data={"template": "welcome", "tags": tags},
            )
            assert refused.status_code == 422, refused.text
            [error] = refused.json()["detail"]
            assert error["loc"] == ["body", "tags"]
            assert words in error["msg"]
        assert list((tmp_path / "jobs").iterdir()) == [], "a refused upload left its file"


@pytest.mark.parametrize("dispatcher_process", [False, True], ids=["in-process", "dispatcher-process"])
async def test_metric_tags_label_the_sent_and_failed_counters(
    dispatcher_process: bool, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    settings = make_settings(
        tmp_path, smtp_sink.port, METRIC_TAGS="billing, welcome", DISPATCHER_PROCESS=dispatcher_process
    )
    async with running(settings) as service:
        samples = await scrape(service)
        # Every label value from the start, at 0.
        for tag in ("", "billing", "welcome"):
            assert value(samples, "notifications_sent_total", tag=tag) == 0
            assert value(samples, "notifications_failed_total", reason="permanent", tag=tag) == 0

        # The first of a notification's tags that METRIC_TAGS lists; any other tag counts under "".
        for tags in (["welcome"], ["other", "billing", "welcome"], ["other"], []):
            response = await service.post(**MAIL, tags=tags)
            await service.wait_for_status(response.json()["id"], "sent")
        smtp_sink.handler.data_replies.append("550 5.7.1 rejected by policy")
        failed = await service.post(**MAIL, tags=["welcome"])
        await service.wait_for_status(failed.json()["id"], "failed")

        await wait_for_metric(service, "notifications_failed_total", 1, reason="permanent", tag="welcome")
        await wait_for_metric(service, "notifications_sent_total", 2, tag="")
        samples = await scrape(service)
    assert value(samples, "notifications_sent_total", tag="welcome") == 1
    assert value(samples, "notifications_sent_total", tag="billing") == 1
    assert value(samples, "notifications_failed_total", reason="permanent", tag="") == 0
    assert not [labels for name, labels in samples if name == "notifications_sent_total" and ("tag", "other") in labels]


async def test_without_metric_tags_every_notification_counts_under_the_empty_tag(
    service: Service, smtp_sink: SmtpSink
) -> None:
    response = await service.post(**MAIL, tags=["welcome"])
    await service.wait_for_status(response.json()["id"], "sent")
    await wait_for_metric(service, "notifications_sent_total", 1, tag="")

    samples = await scrape(service)
    assert {dict(labels)["tag"] for name, labels in samples if name == "notifications_sent_total"} == {""}


def test_metric_tags_must_be_tags(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a tag"):
        make_settings(tmp_path, 25, METRIC_TAGS="welcome,Billing")
    assert make_settings(tmp_path, 25, METRIC_TAGS=" welcome, ,billing,welcome").metric_tags() == (
        "welcome",
        "billing",
    )
    assert Settings(_env_file=None).metric_tags() == ()  # type: ignore[call-arg]


def documented_curl_body() -> dict[str, Any]:
    """The JSON of docs/api.md's one-click unsubscribe `curl`, as the shell passes it."""
    text = (Path(__file__).resolve().parents[2] / "docs/api.md").read_text(encoding="utf-8")
    block = text.split("\n## Headers\n", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    [body] = re.findall(r"-d '([^']*)'", block)
    parsed: dict[str, Any] = json.loads(body)
    return parsed


async def test_the_documented_one_click_curl_is_accepted_and_its_headers_sent(
    service: Service, smtp_sink: SmtpSink
) -> None:
    body = documented_curl_body()

    response = await service.post(**body)

    assert response.status_code == 202, response.text
    assert response.json()["tags"] == ["newsletter", "spring"]
    await service.wait_for_status(response.json()["id"], "sent")
    [received] = await smtp_sink.wait_for(1)
    for name, header_value in body["headers"].items():
        assert received.message[name].strip() == header_value, name
