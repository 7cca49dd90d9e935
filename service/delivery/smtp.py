"""The SMTP connection: one aiosmtplib session kept open across mails, reopened when the server dropped it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiosmtplib
import structlog

from service.config import Settings
from service.delivery.classify import Delivery, DeliveryFailed, _describe, _refused, classify, server_text
from service.delivery.dkim import signer_for
from service.delivery.mime import addr_spec, build_mail_bytes, build_stdlib_bytes, envelope_recipients
from service.outbox import Notification

log = structlog.get_logger("service.delivery.smtp")


@dataclass(frozen=True, slots=True)
class _Mail:
    """One notification's mail, built, with its envelope."""

    notification: Notification
    data: bytes
    sender: str
    recipients: list[str]
    utf8: bool


class _Smtp(aiosmtplib.SMTP):
    """aiosmtplib's client, noting when a mail's DATA begins: from then on the server may have the mail, and a
    connection that drops is no longer just a stale one."""

    data_began = False

    async def data(self, message: str | bytes, /, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        self.data_began = True
        return await super().data(message, **kwargs)


class SmtpConnection:
    """One SMTP session kept open across messages; reconnects when the server has dropped it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._smtp: _Smtp | None = None
        self._dkim = signer_for(settings)

    @property
    def is_open(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def _connect(self) -> _Smtp:
        s = self.settings
        smtp = _Smtp(
            hostname=s.SMTP_HOST,
            port=s.SMTP_PORT,
            use_tls=s.SMTP_TLS,
            start_tls=s.SMTP_STARTTLS,
            timeout=s.SMTP_TIMEOUT_SECONDS,
            username=s.SMTP_USERNAME,
            password=s.SMTP_PASSWORD.get_secret_value() if s.SMTP_PASSWORD else None,
        )
        try:
            await smtp.connect()
        except aiosmtplib.SMTPResponseException as exc:
            # Refused at greeting, EHLO or AUTH: a problem of the connection, not of this mail.
            smtp.close()
            raise DeliveryFailed(f"connect: {_describe(exc.code, exc.message)}", transient=True) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            smtp.close()
            raise DeliveryFailed(f"connect to {s.SMTP_HOST}:{s.SMTP_PORT}: {exc}", transient=True) from exc
        log.debug("smtp_connected", host=s.SMTP_HOST, port=s.SMTP_PORT)
        return smtp

    async def send(self, notification: Notification) -> Delivery:
        """Send within SEND_TIMEOUT_SECONDS; raise DeliveryFailed saying whether a retry may help."""
        sender = addr_spec(self.settings.MAIL_FROM)
        recipients = envelope_recipients(notification)
        if not recipients:
            # What send_message refused before it sent anything.
            raise DeliveryFailed("unsendable: No recipient headers provided in message", transient=False)
        # As aiosmtplib's send_message decides it: an address that is not ASCII needs SMTPUTF8, and then the
        # headers are written in UTF-8 too.
        utf8 = not (sender.isascii() and all(recipient.isascii() for recipient in recipients))
        try:
            data = self._signed(build_mail_bytes(notification, self.settings.MAIL_FROM, utf8=utf8))
        except (ValueError, TypeError) as exc:
            # The email package refuses what cannot be a header (the API refuses it first; this is the second
            # line of defence for rows written another way): no retry can make it sendable.
            raise DeliveryFailed(f"unsendable: {exc}", transient=False) from exc
        mail = _Mail(notification, data, sender, recipients, utf8)
        try:
            async with asyncio.timeout(self.settings.SEND_TIMEOUT_SECONDS):
                return await self._send(mail)
        except TimeoutError as exc:
            # Mid-session state is unknown after a deadline: never reuse this connection.
            self.close()
            raise DeliveryFailed(
                f"no answer from the SMTP server within {self.settings.SEND_TIMEOUT_SECONDS:g}s",
                transient=True,
            ) from exc

    async def open(self) -> None:
        if not self.is_open:
            self.close()
            self._smtp = await self._connect()

    async def _send(self, mail: _Mail) -> Delivery:
        reused = self.is_open
        await self.open()
        assert self._smtp is not None
        try:
            errors, reply = await self._send_mail(self._smtp, mail)
        except aiosmtplib.SMTPServerDisconnected as exc:
            data_began = self._smtp.data_began
            self.close()
            if data_began:
                # The server may have taken the mail before the line went: sending it again at once would make
                # a duplicate nobody sees. As a counted attempt, with backoff, it shows in attempts and here.
                raise DeliveryFailed(
                    server_text(f"connection lost after DATA began, so the server may have the mail: {exc}"),
                    transient=True,
                ) from exc
            if not reused:
                raise classify(exc) from exc
            # The server had closed a kept-open connection (idle timeout) before this mail's content went out:
            # one fresh try, not an attempt.
            self._smtp = await self._connect()
            try:
                errors, reply = await self._send_mail(self._smtp, mail)
            except Exception as retry_exc:
                self._close_if_broken(retry_exc)
                raise classify(retry_exc) from retry_exc
        except Exception as exc:
            self._close_if_broken(exc)
            raise classify(exc) from exc
        return Delivery(smtp_reply=server_text(f"250 {reply}"), refused=_refused(errors))

    async def _send_mail(self, smtp: _Smtp, mail: _Mail) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
        """sendmail with the MAIL options send_message would have chosen for this server, in its order."""
        smtp.data_began = False
        await smtp._ehlo_or_helo_if_needed()  # what send_message does first: the extensions come from EHLO
        options = []
        if mail.utf8:
            if not smtp.supports_extension("smtputf8"):
                raise aiosmtplib.SMTPNotSupported(
                    "An address containing non-ASCII characters was provided, but "
                    "SMTPUTF8 is not supported by this server"
                )
            options.append("SMTPUTF8")
        data = mail.data
        if smtp.supports_extension("8BITMIME"):
            options.append("BODY=8BITMIME")
        elif not data.isascii():
            # Only the stdlib path writes 8bit; without 8BITMIME it re-encodes those parts as 7bit.
            data = self._signed(
                build_stdlib_bytes(mail.notification, self.settings.MAIL_FROM, utf8=mail.utf8, cte_type="7bit")
            )
        return await smtp.sendmail(mail.sender, mail.recipients, data, mail_options=options)

    def _signed(self, data: bytes) -> bytes:
        """The wire bytes as they leave: with their DKIM signature when DKIM is on, signed here and never at
        accept time, so a retry signs again (a fresh t=) and the key stays with the dispatcher."""
        return data if self._dkim is None else self._dkim.sign(data)

    def _close_if_broken(self, exc: BaseException) -> None:
        if not isinstance(exc, (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused)):
            self.close()

    def close(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None

    async def quit(self) -> None:
        """Say goodbye politely when the server is still there; never wait long for it."""
        if self.is_open and self._smtp is not None:
            try:
                async with asyncio.timeout(2):
                    await self._smtp.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                pass
        self.close()
