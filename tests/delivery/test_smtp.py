"""SmtpConnection hands aiosmtplib the mail's bytes: a real server gets what send_message delivered before, with the
same MAIL options, and refuses or fails it the same way."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller

from service.delivery import mime
from service.delivery.classify import DeliveryFailed, classify
from service.delivery.smtp import SmtpConnection
from service.outbox import Notification
from tests.conftest import make_settings
from tests.smtp_sink import Received, RecordingHandler, free_port

BOUNDARY = re.compile(rb"={15}[0-9]{19}==")
MAIL_FROM = "Notifier <notifier@example.com>"


class OptionsHandler(RecordingHandler):
    """Records each mail's MAIL options; can leave 8BITMIME out of its EHLO, as a 7-bit server would, or refuse
    EHLO altogether, as an old server that knows HELO only would."""

    def __init__(self, *, eight_bit: bool, ehlo: bool = True) -> None:
        super().__init__()
        self.eight_bit = eight_bit
        self.ehlo = ehlo
        self.mail_options: list[list[str]] = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
        if not self.ehlo:
            session.extended_smtp = False
            return ["502 5.5.2 Error: command not recognized"]
        session.host_name = hostname
        return [r for r in responses if self.eight_bit or "8BITMIME" not in r]

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.mail_options.append(list(envelope.mail_options))
        return await super().handle_DATA(server, session, envelope)


SERVERS = {
    "8bitmime": {"eight_bit": True, "enable_SMTPUTF8": False},
    "smtputf8": {"eight_bit": True, "enable_SMTPUTF8": True},
    "7bit": {"eight_bit": False, "enable_SMTPUTF8": False},
    # The client falls back to HELO, as send_message does (with public calls: no aiosmtplib private is used).
    "helo-only": {"eight_bit": False, "enable_SMTPUTF8": False, "ehlo": False},
}


@pytest.fixture(params=list(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[tuple[int, OptionsHandler]]:
    kind = SERVERS[request.param]
    handler = OptionsHandler(eight_bit=kind["eight_bit"], ehlo=kind.get("ehlo", True))
    port = free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, ready_timeout=10, enable_SMTPUTF8=kind["enable_SMTPUTF8"]
    )
    controller.start()
    yield port, handler
    controller.stop()


MAILS = {
    "ascii": Notification(
        id="a",
        to=["ada@example.com"],
        cc=["Grace Hopper <grace@example.com>"],
        bcc=["secret@example.com"],
        subject="Hello",
        text="Hi Ada\n.\n.. a dot\nFrom the service",
        message_id="<a@notifier.example.com>",
        created_at=1764075000.0,
    ),
    "non-ascii": Notification(
        id="b",
        to=["Zoë Ünïcode <zoe@example.com>"],
        reply_to="Réponse <r@example.com>",
        subject="Grüße aus Köln " + "long subject " * 8,
        text="Héllo Zoë\n" + "é" * 100,
        html="<p>Héllo</p>",
        message_id="<b@notifier.example.com>",
        created_at=1764075000.0,
    ),
    "non-ascii-address": Notification(
        id="c",
        to=["Zoë <zoë@example.com>"],
        subject="Grüße",
        text="Hi",
        message_id="<c@notifier.example.com>",
        created_at=1764075000.0,
    ),
}


async def send_the_old_way(port: int, n: Notification) -> DeliveryFailed | None:
    """What SmtpConnection did before it wrote bytes: send_message with the stdlib's mail."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as smtp:
        try:
            await smtp.send_message(
                mime.build_message(n, MAIL_FROM),
                sender=mime.addr_spec(MAIL_FROM),
                recipients=mime.envelope_recipients(n),
            )
        except Exception as exc:
            return classify(exc)
    return None


async def send_the_new_way(port: int, n: Notification, tmp_path: Path) -> DeliveryFailed | None:
    connection = SmtpConnection(make_settings(tmp_path, port, MAIL_FROM=MAIL_FROM))
    try:
        await connection.send(n)
    except DeliveryFailed as exc:
        return exc
    finally:
        await connection.quit()
    return None


def same_mail(old: Received, new: Received) -> None:
    assert (new.mail_from, new.rcpt_tos) == (old.mail_from, old.rcpt_tos)
    assert BOUNDARY.sub(b"B", new.data) == BOUNDARY.sub(b"B", old.data)
    old_message, new_message = old.message, new.message
    # Parsed, too: the same headers (a multipart's boundary aside) and the same parts.
    assert [(k, v) for k, v in new_message.items() if k != "Content-Type"] == [
        (k, v) for k, v in old_message.items() if k != "Content-Type"
    ]
    old_parts = [(p.get_content_type(), p.get_content()) for p in old_message.walk() if not p.is_multipart()]
    new_parts = [(p.get_content_type(), p.get_content()) for p in new_message.walk() if not p.is_multipart()]
    assert new_parts == old_parts


@pytest.mark.parametrize("case", list(MAILS))
async def test_the_server_gets_what_send_message_delivered(
    case: str, server: tuple[int, OptionsHandler], tmp_path: Path
) -> None:
    port, handler = server
    n = MAILS[case]
    old_failure = await send_the_old_way(port, n)
    new_failure = await send_the_new_way(port, n, tmp_path)

    if old_failure is not None:
        assert new_failure is not None
        assert (new_failure.reason, new_failure.transient) == (old_failure.reason, old_failure.transient)
        assert handler.received == []
        return
    assert new_failure is None
    old, new = handler.received
    same_mail(old, new)
    assert handler.mail_options[1] == handler.mail_options[0]
    assert b"secret" not in new.data


async def test_the_fast_path_is_what_a_plain_mail_sends(server: tuple[int, OptionsHandler], tmp_path: Path) -> None:
    port, handler = server
    n = MAILS["ascii"]
    assert await send_the_new_way(port, n, tmp_path) is None
    [received] = handler.received
    fast = mime.build_fast_bytes(n, MAIL_FROM)
    assert fast is not None
    assert received.data == fast


@pytest.mark.parametrize("field", ["subject", "to", "reply_to"])
async def test_a_header_with_a_line_break_is_unsendable_and_nothing_is_sent(
    field: str, server: tuple[int, OptionsHandler], tmp_path: Path
) -> None:
    port, handler = server
    value = "ada@example.com\r\nBcc: eve@example.com"
    n = Notification(
        id="d",
        to=["ada@example.com"],
        subject="Hello",
        text="Hi",
        message_id="<d@x>",
        created_at=1.0,
    )
    setattr(n, field, [value] if field == "to" else value)
    failure = await send_the_new_way(port, n, tmp_path)
    assert failure is not None
    assert failure.reason.startswith("unsendable: ")
    assert failure.transient is False
    assert handler.received == []


async def test_a_mail_with_no_recipient_is_unsendable_as_before(
    server: tuple[int, OptionsHandler], tmp_path: Path
) -> None:
    port, handler = server
    n = Notification(id="e", to=[], subject="Hello", text="Hi", message_id="<e@x>", created_at=1.0)
    old_failure = await send_the_old_way(port, n)
    new_failure = await send_the_new_way(port, n, tmp_path)
    assert old_failure is not None
    assert new_failure is not None
    assert (new_failure.reason, new_failure.transient) == (old_failure.reason, old_failure.transient)
    assert handler.received == []
