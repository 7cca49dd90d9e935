"""Every setting the service reads, from environment variables (and an optional `.env`), validated at start.

Field names are the environment variables' names, so `grep SMTP_HOST` finds both the setting and its uses.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
import ssl
import sys
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.domain import TAG_PATTERN

# OUTBOX_URL may carry a password (postgresql://user:password@host/db).
SECRET_FIELDS = frozenset({"SMTP_PASSWORD", "API_KEYS", "OUTBOX_URL", "WEBHOOK_SECRET"})
# Standard Webhooks' secret: whsec_ and base64 of 24 to 64 random bytes.
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
# The hosted APIs COMPAT_APIS may name.
COMPAT_API_NAMES = ("resend", "postmark")
# Shortest API key accepted: a guessable key is no key.
MIN_API_KEY_LENGTH = 16


# A DNS name, as ALLOWED_FROM names a domain (one label too: `localhost` in development).
_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # SMTP: where mail goes
    SMTP_HOST: str = Field("localhost", min_length=1, description="SMTP server host name.")
    SMTP_PORT: int = Field(1025, ge=1, le=65535, description="SMTP server port.")
    SMTP_USERNAME: str | None = Field(None, description="SMTP AUTH user; unset means no login.")
    SMTP_PASSWORD: SecretStr | None = Field(None, description="SMTP AUTH password. Never logged.")
    SMTP_STARTTLS: bool = Field(False, description="Upgrade the connection with STARTTLS after EHLO.")
    SMTP_TLS: bool = Field(False, description="Connect with implicit TLS (usually port 465).")
    SMTP_VERIFY_CERTS: bool = Field(
        True,
        description="Check the SMTP server's certificate and host name. false only for a development relay with a"
        " self-signed certificate: a warning at start, and /health/ready shows it.",
    )
    SMTP_CA_FILE: Path | None = Field(
        None,
        description="PEM bundle of the CAs trusted for the SMTP connection, instead of the system's (a private"
        " CA); for this connection only, not process-wide. Unset: the system's CAs.",
    )
    SMTP_CLIENT_CERT_FILE: Path | None = Field(
        None, description="PEM client certificate (and chain) shown to a relay that wants mutual TLS."
    )
    SMTP_CLIENT_KEY_FILE: Path | None = Field(
        None,
        description="Unencrypted PEM private key of SMTP_CLIENT_CERT_FILE; unset: the key is in that file.",
    )
    SMTP_TIMEOUT_SECONDS: float = Field(10.0, gt=0, description="Timeout of one SMTP command or connect.")
    SEND_TIMEOUT_SECONDS: float = Field(
        30.0, gt=0, description="Deadline for one whole send; a stalled server frees the worker after it."
    )
    MAIL_FROM: str = Field(
        "notifications@example.com",
        min_length=3,
        description="Envelope sender and From header, unless a request names its own `from` (ALLOWED_FROM).",
    )
    # Also read as COMPAT_ALLOWED_FROM, the name the hosted-API compatibility layer's contract uses (issue 20).
    ALLOWED_FROM: str = Field(
        "",
        validation_alias=AliasChoices("ALLOWED_FROM", "COMPAT_ALLOWED_FROM"),
        description="Comma-separated addresses and domains a request's `from` may use (a domain allows every"
        " address at it); empty: MAIL_FROM's domain only. Also read as COMPAT_ALLOWED_FROM.",
    )

    # Outbox: where accepted mail waits, on disk
    OUTBOX_PATH: Path = Field(Path("data/outbox.sqlite3"), description="SQLite file of the outbox.")
    OUTBOX_SYNCHRONOUS: Literal["NORMAL", "FULL"] = Field(
        "NORMAL",
        description="SQLite `synchronous` pragma: NORMAL survives a process crash, FULL also a power loss.",
    )

    # Dispatcher: how mail is sent and retried
    SEND_CONCURRENCY: int = Field(8, ge=1, le=256, description="Workers, each with one SMTP connection.")
    MAX_ATTEMPTS: int = Field(8, ge=1, le=100, description="Attempts before a transient failure is final.")
    RETRY_BASE_SECONDS: float = Field(2.0, gt=0, description="First retry delay; doubles each attempt.")
    RETRY_MAX_SECONDS: float = Field(600.0, gt=0, description="Upper bound of one retry delay.")
    SHUTDOWN_GRACE_SECONDS: float = Field(10.0, ge=0, description="How long in-flight sends may finish.")
    DISPATCHER_PROCESS: bool = Field(
        True,
        description="Send from a process of its own, so delivery gets a core and the HTTP process only accepts;"
        " false: one process does both.",
    )
    DISPATCHER_NICE: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness of that process: when the cores are busy, answering requests comes first and the"
        " outbox holds what waits; 0: equal shares.",
    )
    SEND_RATE_LIMIT: float = Field(
        0.0,
        ge=0,
        description="Most mails per second this instance sends, shared by all its workers (one token bucket), so it"
        " stays under the relay's rate; per replica with several. 0: no limit. A throttling reply (421, 454, a"
        " 451 for the whole mail) pauses every worker, backing off like a retry (RETRY_BASE/MAX_SECONDS).",
    )

    # DKIM: every mail signed in the dispatcher before it leaves (service/delivery/dkim.py); all three or none
    DKIM_DOMAIN: str | None = Field(
        None,
        max_length=253,
        pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$",
        description="DKIM signing domain (d=), usually MAIL_FROM's domain; its DNS publishes the public key.",
    )
    DKIM_SELECTOR: str | None = Field(
        None,
        max_length=63,
        pattern=r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$",
        description="DKIM selector (s=): the key's TXT record is <selector>._domainkey.<DKIM_DOMAIN>.",
    )
    DKIM_PRIVATE_KEY_FILE: Path | None = Field(
        None,
        description="Unencrypted PEM private key, RSA 2048 to 4096 bits or Ed25519; read at start, where a bad one"
        " stops it.",
    )

    @field_validator("DKIM_DOMAIN", "DKIM_SELECTOR", "DKIM_PRIVATE_KEY_FILE", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # An env file's `DKIM_DOMAIN=` means "not set", as for OUTBOX_URL.
        return None if value == "" else value

    # Request limits
    MAX_RECIPIENTS: int = Field(50, ge=1, le=1000, description="Most addresses in to+cc+bcc together.")
    MAX_SCHEDULE_DAYS: float = Field(
        30, gt=0, le=3650, description="How far ahead a send_at may be; a later one is refused with 422."
    )

    # Metrics
    METRIC_TAGS: str = Field(
        "",
        description="Comma-separated tags that get their own `tag` label value on notifications_sent_total and"
        ' notifications_failed_total; every other notification counts under tag="". Keeps the series bounded.',
    )

    @field_validator("METRIC_TAGS")
    @classmethod
    def _check_metric_tags(cls, value: str) -> str:
        for tag in value.split(","):
            tag = tag.strip()
            if tag and not re.match(TAG_PATTERN, tag):
                raise ValueError(f"{tag!r} is not a tag: 1 to 64 characters of a-z, 0-9, _ . -")
        return value

    def metric_tags(self) -> tuple[str, ...]:
        """METRIC_TAGS as a list, each tag once, in the order given."""
        return tuple(dict.fromkeys(tag.strip() for tag in self.METRIC_TAGS.split(",") if tag.strip()))

    MAX_ATTACHMENTS: int = Field(10, ge=0, le=100, description="Most attachments of one notification.")
    MAX_ATTACHMENT_BYTES: int = Field(
        10_485_760, ge=0, description="Most bytes of one notification's attachments together, decoded; more is 413."
    )

    # Logging
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Lowest level logged.")
    LOG_FORMAT: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a TTY, JSON lines otherwise."
    )

    # Protection: who may call, how big a request may be, how much may wait, how long a retry is recognised
    API_KEYS: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated bearer keys for /v1 and the tutorial routes; empty leaves the API open.",
    )
    MAX_BODY_BYTES: int = Field(
        16_777_216,
        ge=1024,
        description="Largest request body; checked while it streams, before it is parsed. Fits"
        " MAX_ATTACHMENT_BYTES in base64 (4/3 of it) and the rest of the JSON.",
    )
    QUEUE_LIMIT: int = Field(
        100_000,
        ge=1,
        description="Most notifications not yet sent (queued + sending; scheduled ones count once due);"
        " past it POST answers 429.",
    )
    IDEMPOTENCY_TTL_HOURS: float = Field(
        24.0, gt=0, le=24 * 365, description="How long an Idempotency-Key and its first answer are remembered."
    )

    # Suppressions: addresses that bounced for good are not mailed again
    SUPPRESS_ON_HARD_BOUNCE: bool = Field(
        True,
        description="A recipient refused with a hard bounce (5xx with 5.1.1, 5.1.2, 5.1.10 or 5.2.1) goes on the"
        " suppression list and is left out of later notifications; false: the bounce is only recorded there.",
    )
    SUPPRESSION_REFRESH_SECONDS: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often each process checks the suppression list for changes made elsewhere (a bounce in"
        " the dispatcher's process, another replica); one row read when nothing changed.",
    )

    # Webhooks: signed events out to the calling application (docs/events.md)
    WEBHOOK_URLS: str = Field(
        "",
        description="Comma-separated http(s) URLs that get every event (notification.sent, .failed, .delayed,"
        " job.finished), signed; empty: no webhooks, and no event is written.",
    )
    WEBHOOK_SECRET: SecretStr = Field(
        SecretStr(""),
        description="The signing key, in Standard Webhooks' whsec_<base64> form (24 to 64 bytes); required with"
        " WEBHOOK_URLS. Never logged.",
    )
    WEBHOOK_MAX_ATTEMPTS: int = Field(
        8, ge=1, le=100, description="Attempts of one delivery before it is given up (listed as failed)."
    )
    WEBHOOK_RETRY_BASE_SECONDS: float = Field(
        5.0, gt=0, description="First retry of a delivery after this long; doubles each attempt, with jitter."
    )
    WEBHOOK_RETRY_MAX_SECONDS: float = Field(3600.0, gt=0, description="Upper bound of one delivery's retry delay.")
    WEBHOOK_TIMEOUT_SECONDS: float = Field(
        10.0, gt=0, le=300, description="Deadline of one delivery: connect, send, and the receiver's reply."
    )
    WEBHOOK_CONCURRENCY: int = Field(
        4, ge=1, le=64, description="Deliveries in flight at once in one process (its own workers, not mail's)."
    )
    WEBHOOK_ALLOW_PRIVATE: bool = Field(
        True,
        description="true (the compose stack's default): a URL may point at a private, loopback or link-local"
        " address. false: the SSRF guard; a URL whose host resolves to any non-public address stops the start.",
    )

    @field_validator("ALLOWED_FROM")
    @classmethod
    def _check_allowed_from(cls, value: str) -> str:
        for entry in value.split(","):
            entry = entry.strip()
            local, at, domain = entry.rpartition("@")
            if entry and (not _DOMAIN.match(domain) or (at and not local) or any(c in entry for c in ' <>"')):
                raise ValueError(f"{entry!r} is neither an address (billing@example.com) nor a domain (example.com)")
        return value

    def mail_from_domain(self) -> str:
        """MAIL_FROM's domain, lower-cased: `Notifier <notifier@Example.com>` gives `example.com`."""
        return self.MAIL_FROM.rpartition("@")[2].rstrip(">").strip().lower()

    def allowed_from(self) -> tuple[frozenset[str], frozenset[str]]:
        """ALLOWED_FROM as (addresses, domains), lower-cased; empty: MAIL_FROM's domain alone."""
        entries = [entry.strip().lower() for entry in self.ALLOWED_FROM.split(",") if entry.strip()]
        if not entries:
            entries = [self.mail_from_domain()]
        return (
            frozenset(entry for entry in entries if "@" in entry),
            frozenset(entry for entry in entries if "@" not in entry),
        )

    # Compatibility: the hosted APIs' own routes, for their SDKs (docs/compat.md)
    COMPAT_APIS: str = Field(
        "",
        description="Comma-separated hosted APIs whose SDKs may call this service: resend (under /compat/resend),"
        " postmark (under /compat/postmark). Empty: neither is mounted.",
    )
    COMPAT_FETCH_ATTACHMENTS: bool = Field(
        False,
        description="true: a Resend attachment given by `path` (an http(s) URL) is fetched, at most"
        " MAX_ATTACHMENT_BYTES within COMPAT_FETCH_TIMEOUT_SECONDS. false: such an attachment is refused (SSRF).",
    )
    COMPAT_FETCH_ALLOW_PRIVATE: bool = Field(
        False,
        description="With COMPAT_FETCH_ATTACHMENTS: true also fetches from private, loopback and link-local"
        " addresses; false refuses a `path` whose host resolves to any of them.",
    )
    COMPAT_FETCH_TIMEOUT_SECONDS: float = Field(
        10.0, gt=0, le=120, description="Deadline of one attachment fetch (COMPAT_FETCH_ATTACHMENTS)."
    )

    @field_validator("COMPAT_APIS")
    @classmethod
    def _check_compat_apis(cls, value: str) -> str:
        unknown = [
            name for name in (part.strip() for part in value.split(",")) if name and name not in COMPAT_API_NAMES
        ]
        if unknown:
            raise ValueError(f"unknown API {unknown[0]!r}: choose among {', '.join(COMPAT_API_NAMES)}")
        return value

    def compat_apis(self) -> tuple[str, ...]:
        """COMPAT_APIS as a list, each API once."""
        return tuple(dict.fromkeys(name.strip() for name in self.COMPAT_APIS.split(",") if name.strip()))

    def webhook_urls(self) -> list[str]:
        """The configured webhook URLs; an empty list means no webhooks."""
        return [url.strip() for url in self.WEBHOOK_URLS.split(",") if url.strip()]

    @field_validator("WEBHOOK_SECRET")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr) -> SecretStr:
        # The message never echoes the secret: describe_errors() leaves SECRET_FIELDS' input out.
        secret = value.get_secret_value()
        if not secret:
            return value
        if not secret.startswith(WEBHOOK_SECRET_PREFIX):
            raise ValueError(
                f"must be {WEBHOOK_SECRET_PREFIX}<base64>: make one with"
                " `python -c \"import base64,os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\"`"
            )
        try:
            key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"the part after {WEBHOOK_SECRET_PREFIX} is not base64") from None
        if not 24 <= len(key) <= 64:
            raise ValueError(f"the key must be 24 to 64 bytes (it is {len(key)})")
        return value

    @model_validator(mode="after")
    def _check_webhooks(self) -> Settings:
        urls = self.webhook_urls()
        for url in urls:
            check_webhook_url(url, allow_private=self.WEBHOOK_ALLOW_PRIVATE)
        if urls and not self.WEBHOOK_SECRET.get_secret_value():
            raise ValueError("WEBHOOK_URLS is set without WEBHOOK_SECRET: every event is signed with it")
        if self.WEBHOOK_RETRY_MAX_SECONDS < self.WEBHOOK_RETRY_BASE_SECONDS:
            raise ValueError("WEBHOOK_RETRY_MAX_SECONDS must be at least WEBHOOK_RETRY_BASE_SECONDS")
        return self

    @field_validator("API_KEYS")
    @classmethod
    def _check_api_keys(cls, value: SecretStr) -> SecretStr:
        # The message never echoes a key: describe_errors() leaves SECRET_FIELDS' input out too.
        for key in value.get_secret_value().split(","):
            key = key.strip()
            if key and (len(key) < MIN_API_KEY_LENGTH or not key.isascii() or not key.isprintable() or " " in key):
                raise ValueError(
                    f"every key must be at least {MIN_API_KEY_LENGTH} printable ASCII characters without spaces"
                )
            if key.startswith(("replace-with", "change-me", "changeme")):
                raise ValueError("a key is still the example's placeholder: make one with `openssl rand -hex 32`")
        return value

    def api_keys(self) -> list[str]:
        """The configured API keys; an empty list means the API is open."""
        return [key.strip() for key in self.API_KEYS.get_secret_value().split(",") if key.strip()]

    # Templates, batches and CSV mail-merge jobs
    TEMPLATES_DIR: Path = Field(
        Path("config/templates"),
        description="Folder of mail templates: <name>/subject.txt, body.txt and optional body.html. Loaded at start.",
    )
    BATCH_LIMIT: int = Field(100, ge=1, le=10_000, description="Most notifications in one batch request.")
    MAX_UPLOAD_BYTES: int = Field(50 * 1024 * 1024, ge=1, description="Largest CSV a mail-merge job accepts.")
    JOBS_DIR: Path = Field(Path("data/jobs"), description="Where uploaded mail-merge CSV files are kept.")
    JOB_CHUNK_ROWS: int = Field(
        500, ge=1, le=10_000, description="CSV rows turned into notifications per outbox transaction."
    )
    JOB_MAX_QUEUED: int = Field(
        1000,
        ge=0,
        description="A job pauses while this many of its notifications wait to be sent, so a big mail-merge"
        " cannot push single notifications to the back of a long queue. 0: no limit.",
    )

    @field_validator("SMTP_CA_FILE", "SMTP_CLIENT_CERT_FILE", "SMTP_CLIENT_KEY_FILE", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("SMTP_CA_FILE")
    @classmethod
    def _check_ca_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=value)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"not a readable PEM file of CA certificates: {exc}") from None
        return value

    @field_validator("SMTP_CLIENT_CERT_FILE", "SMTP_CLIENT_KEY_FILE")
    @classmethod
    def _check_pem_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                text = value.read_text(encoding="ascii", errors="replace")
            except OSError as exc:
                raise ValueError(f"cannot read it: {exc}") from None
            if "-----BEGIN " not in text:
                raise ValueError("no PEM block (-----BEGIN ...) in it")
            if "ENCRYPTED" in text:
                raise ValueError("the key is encrypted: give an unencrypted key, readable only by the service")
        return value

    @model_validator(mode="after")
    def _check_smtp_tls(self) -> Settings:
        tls_files = [
            name for name in ("SMTP_CA_FILE", "SMTP_CLIENT_CERT_FILE", "SMTP_CLIENT_KEY_FILE") if getattr(self, name)
        ]
        # A CA file set with TLS off would send in clear text while the operator believes it is checked.
        if tls_files and not (self.SMTP_TLS or self.SMTP_STARTTLS):
            raise ValueError(
                f"{', '.join(tls_files)}: used by TLS only, which is off: set SMTP_STARTTLS=true (587) or SMTP_TLS=true"
                " (465)"
            )
        if self.SMTP_CA_FILE is not None and not self.SMTP_VERIFY_CERTS:
            raise ValueError("SMTP_CA_FILE is set but SMTP_VERIFY_CERTS=false would not check against it")
        if self.SMTP_CLIENT_KEY_FILE is not None and self.SMTP_CLIENT_CERT_FILE is None:
            raise ValueError("SMTP_CLIENT_KEY_FILE is set without SMTP_CLIENT_CERT_FILE")
        if self.SMTP_CLIENT_CERT_FILE is not None:
            text = self.SMTP_CLIENT_CERT_FILE.read_text(encoding="ascii", errors="replace")
            if self.SMTP_CLIENT_KEY_FILE is None and "PRIVATE KEY-----" not in text:
                raise ValueError("SMTP_CLIENT_CERT_FILE holds no private key: set SMTP_CLIENT_KEY_FILE too")
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
                    self.SMTP_CLIENT_CERT_FILE, self.SMTP_CLIENT_KEY_FILE, password=b""
                )
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"SMTP_CLIENT_CERT_FILE and SMTP_CLIENT_KEY_FILE are not a certificate and its key: {exc}"
                ) from None
        return self

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.SMTP_TLS and self.SMTP_STARTTLS:
            raise ValueError("SMTP_TLS and SMTP_STARTTLS are exclusive: choose implicit TLS or STARTTLS")
        if (self.SMTP_USERNAME is None) != (self.SMTP_PASSWORD is None):
            raise ValueError("SMTP_USERNAME and SMTP_PASSWORD are set together or not at all")
        if self.RETRY_MAX_SECONDS < self.RETRY_BASE_SECONDS:
            raise ValueError("RETRY_MAX_SECONDS must be at least RETRY_BASE_SECONDS")
        dkim = (self.DKIM_DOMAIN, self.DKIM_SELECTOR, self.DKIM_PRIVATE_KEY_FILE)
        if any(value is None for value in dkim) and any(value is not None for value in dkim):
            raise ValueError("DKIM_DOMAIN, DKIM_SELECTOR and DKIM_PRIVATE_KEY_FILE are set together or not at all")
        return self

    # Scale-out: the outbox in PostgreSQL, shared by several replicas
    OUTBOX_URL: SecretStr | None = Field(
        None,
        description="postgresql://user:password@host:5432/db puts the outbox in PostgreSQL (several replicas can"
        " share it); unset keeps the SQLite file at OUTBOX_PATH.",
    )
    LEASE_SECONDS: float = Field(
        120.0,
        gt=0,
        description="How long a replica's claim on a notification lasts; a replica that dies loses its claims"
        " after it. Must exceed twice SEND_TIMEOUT_SECONDS.",
    )
    OUTBOX_POOL_SIZE: int = Field(10, ge=2, le=100, description="Most PostgreSQL connections of one replica.")

    @field_validator("OUTBOX_URL", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_outbox_url(self) -> Settings:
        url = self.OUTBOX_URL.get_secret_value() if self.OUTBOX_URL is not None else None
        if url is not None and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("OUTBOX_URL must start with postgresql:// (unset it to use the SQLite file)")
        # A claimed notification can wait in the dispatcher's queue for one send of another worker, then take
        # one send of its own: the lease must outlast both, or another replica would send it a second time.
        # Only PostgreSQL has leases; the SQLite file has one process and no lease to run out.
        if url is not None and self.LEASE_SECONDS <= 2 * self.SEND_TIMEOUT_SECONDS:
            raise ValueError("LEASE_SECONDS must be more than twice SEND_TIMEOUT_SECONDS")
        return self


def check_webhook_url(url: str, *, allow_private: bool) -> None:
    """Raise ValueError unless `url` is http(s) with a host; with `allow_private` false, also unless every address
    its host resolves to now is public (the SSRF guard: no loopback, link-local, private or reserved address)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"WEBHOOK_URLS: {url!r} is not an http(s) URL with a host")
    if allow_private:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)}
    except (OSError, ValueError) as exc:
        raise ValueError(f"WEBHOOK_URLS: the host of {url!r} does not resolve ({exc})") from None
    for address in sorted(addresses):
        ip = ipaddress.ip_address(str(address).split("%", 1)[0])
        if not ip.is_global:
            kind = "loopback" if ip.is_loopback else "link-local" if ip.is_link_local else "non-public"
            raise ValueError(
                f"WEBHOOK_URLS: {url!r} resolves to {kind} address {address}, refused while WEBHOOK_ALLOW_PRIVATE=false"
            )


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per bad variable, naming it and saying what is wrong; secrets' values are never echoed."""
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"] and name not in SECRET_FIELDS and error["type"] != "missing":
            message = f"{message} (got {error['input']!r})"
        lines.append(f"config error: {name}: {message}")
    return lines


def load_settings() -> Settings:
    """Settings from the environment; on a bad value, print what is wrong and stop without a traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        print("\n".join(describe_errors(exc)), file=sys.stderr)
        raise SystemExit(2) from None
