"""The SMTP connection: one aiosmtplib session kept open across mails, reopened when the server dropped it."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any

import aiosmtplib
import structlog

from service.config import Settings
from service.delivery.classify import DeliveryFailed, classify, describe, refusals, server_text
from service.delivery.dkim import signer_for
from service.delivery.mime import addr_spec, build_mail_bytes, build_stdlib_bytes, envelope_recipients
from service.delivery.tls import build_tls_context, certificate_failure, describe_certificate_failure
from service.domain import SendTaken
from service.outbox import Notification

log = structlog.get_logger("service.delivery.smtp")

STARTTLS_HINT = "set SMTP_STARTTLS=true (port 587) or SMTP_TLS=true (port 465)"


async def _ehlo_or_helo_if_needed(smtp: aiosmtplib.SMTP) -> None:
    """EHLO (HELO when the server refuses EHLO) unless the session has greeted already: what aiosmtplib's private
    `_ehlo_or_helo_if_needed` does, with its public calls."""
    if smtp.is_ehlo_or_helo_needed:
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not smtp.is_connected:
                raise
            await smtp.helo()


class ConnectionFailed(DeliveryFailed):
    """The relay refused the connection itself (unreachable, TLS, login, STARTTLS): the settings' or the server's
    problem, never one mail's, so always worth a retry. `problem` says it in a few stable words for readiness."""

    def __init__(self, problem: str, reason: str) -> None:
        super().__init__(reason, transient=True)
        self.problem = problem


class _LoginState:
    """Whether the relay refused our last login, in this process: `smtp_login_refused` is logged once when it
    starts refusing and `smtp_login_accepted` once when it stops, not once per worker and attempt."""

    def __init__(self) -> None:
        self._refused: set[tuple[str, int, str]] = set()

    def refused(self, settings: Settings, code: int, message: str) -> None:
        key = (settings.SMTP_HOST, settings.SMTP_PORT, settings.SMTP_USERNAME or "")
        if key not in self._refused:
            self._refused.add(key)
            log.error(
                "smtp_login_refused",
                host=settings.SMTP_HOST,
                port=settings.SMTP_PORT,
                smtp_reply=describe(code, message),
                detail="check SMTP_USERNAME and SMTP_PASSWORD; mail stays queued and is retried",
            )

    def accepted(self, settings: Settings) -> None:
        key = (settings.SMTP_HOST, settings.SMTP_PORT, settings.SMTP_USERNAME or "")
        if key in self._refused:
            self._refused.discard(key)
            log.info("smtp_login_accepted", host=settings.SMTP_HOST, port=settings.SMTP_PORT)


login_state = _LoginState()


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
        # MAIL FROM for every mail without a sender of its own: parsed once, not per mail (~2% of a drained mail).
        self._mail_from_address = addr_spec(settings.MAIL_FROM)

    @property
    def is_open(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def _connect(self) -> _Smtp:
        s = self.settings
        tls_context = None
        if s.SMTP_TLS or s.SMTP_STARTTLS:
            try:
                tls_context = await asyncio.to_thread(build_tls_context, s)
            except (OSError, ssl.SSLError) as exc:
                # Checked at start; a file replaced or removed since then lands here.
                raise ConnectionFailed("TLS settings unusable", f"SMTP TLS settings unusable: {exc}") from exc
        smtp = _Smtp(
            hostname=s.SMTP_HOST,
            port=s.SMTP_PORT,
            use_tls=s.SMTP_TLS,
            start_tls=s.SMTP_STARTTLS,
            timeout=s.SMTP_TIMEOUT_SECONDS,
            tls_context=tls_context,
        )
        try:
            await smtp.connect()
            # EHLO now, not at the first mail: what the server offers decides the login, and the probe reports it.
            await _ehlo_or_helo_if_needed(smtp)
            if s.SMTP_USERNAME is not None:
                await self._login(smtp)
        except ConnectionFailed:
            smtp.close()
            raise
        except (aiosmtplib.SMTPException, OSError) as exc:
            smtp.close()
            raise self._connect_failed(exc) from exc
        log.debug("smtp_connected", host=s.SMTP_HOST, port=s.SMTP_PORT)
        return smtp

    async def _login(self, smtp: _Smtp) -> None:
        s = self.settings
        assert s.SMTP_USERNAME is not None
        assert s.SMTP_PASSWORD is not None
        if not smtp.supports_extension("auth") and smtp.supports_extension("starttls") and not self.uses_tls:
            # aiosmtplib's own words ("AUTH extension is not supported") hide that the server offers AUTH after
            # STARTTLS only, as RFC 4954 servers should.
            raise ConnectionFailed(
                "STARTTLS required",
                f"connect to {s.SMTP_HOST}:{s.SMTP_PORT}: the server offers AUTH only after STARTTLS, and"
                f" SMTP_STARTTLS is off: {STARTTLS_HINT}",
            )
        await smtp.login(s.SMTP_USERNAME, s.SMTP_PASSWORD.get_secret_value())
        login_state.accepted(s)

    @property
    def uses_tls(self) -> bool:
        return self.settings.SMTP_TLS or self.settings.SMTP_STARTTLS

    @property
    def offers_starttls(self) -> bool:
        """The open connection is in clear text, and the server would have upgraded it."""
        return self._smtp is not None and not self.uses_tls and self._smtp.supports_extension("starttls")

    def _connect_failed(self, exc: BaseException) -> ConnectionFailed:
        """What stopped the connection, in the words an operator needs, naming the setting that fixes it."""
        s = self.settings
        where = f"connect to {s.SMTP_HOST}:{s.SMTP_PORT}"
        if (failure := certificate_failure(exc)) is not None:
            return ConnectionFailed(
                "certificate verification failed", f"{where}: {describe_certificate_failure(failure, s)}"
            )
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError) and 500 <= exc.code < 600:
            # A wrong password is the operator's problem, not the message's: the mail is kept and retried.
            login_state.refused(s, exc.code, exc.message)
            return ConnectionFailed(
                "authentication failed",
                f"{where}: login refused: {describe(exc.code, exc.message)}: check SMTP_USERNAME and SMTP_PASSWORD",
            )
        if isinstance(exc, aiosmtplib.SMTPResponseException) and not isinstance(exc, aiosmtplib.SMTPConnectError):
            # Refused at greeting, EHLO or AUTH: a problem of the connection, not of this mail.
            return ConnectionFailed("refused the session", f"connect: {describe(exc.code, exc.message)}")
        if s.SMTP_STARTTLS and isinstance(exc, aiosmtplib.SMTPException) and "STARTTLS" in str(exc):
            return ConnectionFailed(
                "STARTTLS not offered",
                f"{where}: the server offers no STARTTLS, and SMTP_STARTTLS is on: is SMTP_PORT right? "
                "(587 for STARTTLS; 465 is implicit TLS: SMTP_TLS=true)",
            )
        if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
            hint = ""
            if s.SMTP_TLS and "WRONG_VERSION_NUMBER" in str(exc):
                hint = ": the port does not speak TLS from the first byte; for 587 use SMTP_STARTTLS=true, not SMTP_TLS"
            return ConnectionFailed("TLS handshake failed", f"{where}: TLS handshake failed: {exc}{hint}")
        if isinstance(exc, TimeoutError):
            return ConnectionFailed("timed out", f"{where}: {exc}")
        if isinstance(exc, aiosmtplib.SMTPServerDisconnected) or isinstance(
            exc.__cause__, aiosmtplib.SMTPServerDisconnected
        ):
            hint = ""
            if self.uses_tls and s.SMTP_CLIENT_CERT_FILE is None:
                # TLS 1.3 lets the handshake finish before the server checks for a client certificate: all the
                # client sees of a refusal is the connection closing.
                hint = ": a relay that wants a client certificate closes right after TLS (SMTP_CLIENT_CERT_FILE)"
            return ConnectionFailed("closed by the server", f"{where}: the server closed the connection ({exc}){hint}")
        if isinstance(exc, aiosmtplib.SMTPConnectError):
            return ConnectionFailed("unreachable", f"{where}: {exc}")
        return ConnectionFailed("connection failed", f"{where}: {exc}")

    async def send(self, notification: Notification) -> SendTaken:
        """Send within SEND_TIMEOUT_SECONDS; raise DeliveryFailed saying whether a retry may help."""
        sender = addr_spec(notification.sender) if notification.sender else self._mail_from_address
        recipients = envelope_recipients(notification)
        if not recipients:
            # What send_message refused before it sent anything.
            raise DeliveryFailed("unsendable: No recipient headers provided in message", transient=False)
        # As aiosmtplib's send_message decides it: an address that is not ASCII needs SMTPUTF8, and then the
        # headers are written in UTF-8 too.
        utf8 = not (sender.isascii() and all(recipient.isascii() for recipient in recipients))
        try:
            if notification.attachments:
                # Megabytes to encode (and sign, ~35 ms a MiB each): in a thread, so that the other workers on this
                # event loop go on sending meanwhile instead of stalling behind it.
                data = await asyncio.to_thread(self._build_signed, notification, utf8)
            else:
                data = self._build_signed(notification, utf8)
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

    async def _send(self, mail: _Mail) -> SendTaken:
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
                raise self._classify(exc) from exc
            # The server had closed a kept-open connection (idle timeout) before this mail's content went out:
            # one fresh try, not an attempt.
            self._smtp = await self._connect()
            try:
                errors, reply = await self._send_mail(self._smtp, mail)
            except Exception as retry_exc:
                self._close_if_broken(retry_exc)
                raise self._classify(retry_exc) from retry_exc
        except Exception as exc:
            self._close_if_broken(exc)
            raise self._classify(exc) from exc
        return SendTaken(smtp_reply=server_text(f"250 {reply}"), refused=refusals(errors))

    async def _send_mail(self, smtp: _Smtp, mail: _Mail) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
        """sendmail with the MAIL options send_message would have chosen for this server, in its order."""
        smtp.data_began = False
        # What send_message does first: the extensions read below come from EHLO.
        await _ehlo_or_helo_if_needed(smtp)
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
                build_stdlib_bytes(
                    mail.notification, self.mail_from(mail.notification), utf8=mail.utf8, cte_type="7bit"
                )
            )
        return await smtp.sendmail(mail.sender, mail.recipients, data, mail_options=options)

    def _classify(self, exc: BaseException) -> DeliveryFailed:
        if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code == 530:
            # 530 (RFC 3207, 4954) refuses the session, not this mail: a 5xx that must be retried, not failed.
            reply = describe(exc.code, exc.message)
            if not self.uses_tls and "STARTTLS" in exc.message.upper():
                return ConnectionFailed(
                    "STARTTLS required",
                    f"{reply}: the server requires STARTTLS, and SMTP_STARTTLS is off: {STARTTLS_HINT}",
                )
            if self.settings.SMTP_USERNAME is None:
                return ConnectionFailed(
                    "authentication required",
                    f"{reply}: the server requires a login: set SMTP_USERNAME and SMTP_PASSWORD",
                )
        return classify(exc)

    def mail_from(self, notification: Notification) -> str:
        """The From header: the notification's own sender (the request's `from`), else MAIL_FROM."""
        return notification.sender or self.settings.MAIL_FROM

    def _build_signed(self, notification: Notification, utf8: bool) -> bytes:
        return self._signed(build_mail_bytes(notification, self.mail_from(notification), utf8=utf8))

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
