"""The TLS of the SMTP connection: which CAs it trusts, whether it checks the certificate, the client certificate
it shows, and what a failed handshake means in a few words."""

from __future__ import annotations

import ssl

from service.config import Settings


def build_tls_context(settings: Settings) -> ssl.SSLContext:
    """The context for this connection alone: SMTP_CA_FILE replaces the system's CAs here and nowhere else in the
    process. Blocking (it reads files, and the system's CAs): call it in a thread."""
    cafile = str(settings.SMTP_CA_FILE) if settings.SMTP_CA_FILE else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if not settings.SMTP_VERIFY_CERTS:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.SMTP_CLIENT_CERT_FILE is not None:
        key = settings.SMTP_CLIENT_KEY_FILE
        # An empty password: an encrypted key fails here instead of OpenSSL prompting on a terminal nobody reads.
        context.load_cert_chain(settings.SMTP_CLIENT_CERT_FILE, keyfile=key, password=b"")
    return context


def certificate_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check that failed, wherever aiosmtplib put it (raised as is by STARTTLS, wrapped in an
    SMTPConnectError by implicit TLS)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def describe_certificate_failure(failure: ssl.SSLCertVerificationError, settings: Settings) -> str:
    """The verification failure as OpenSSL names it, and the setting that fixes it."""
    message = failure.verify_message or str(failure)
    if "mismatch" in message:
        hint = (
            f"SMTP_HOST ({settings.SMTP_HOST}) must be a name the relay's certificate lists: use the host name"
            " the provider documents, not an IP address or an alias"
        )
    elif settings.SMTP_CA_FILE is not None:
        hint = f"SMTP_CA_FILE ({settings.SMTP_CA_FILE}) does not hold the CA that issued the relay's certificate"
    else:
        hint = "a relay with a private CA needs that CA's certificate in SMTP_CA_FILE"
    return f"certificate verification failed (CERTIFICATE_VERIFY_FAILED: {message}): {hint}"
