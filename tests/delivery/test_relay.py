"""The real-relay path, against a real TLS SMTP server on loopback with certificates from a throwaway CA: STARTTLS and
implicit TLS with AUTH PLAIN and LOGIN, certificates that must not be trusted, a refused login, a relay that needs
STARTTLS, mutual TLS. In every case the password shows in no log line and no answer."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword
from asgi_lifespan import LifespanManager

from service.config import Settings
from service.main import create_app
from tests.conftest import MAIL, Service, captured_events, make_settings
from tests.smtp_sink import SmtpSink
from tests.test_secrets import PASSWORD, secret_forms

USER = "relay-user"
MECHANISMS = ("PLAIN", "LOGIN")
# aiosmtpd's warning about AUTH without TLS, for its implicit-TLS relays here: the line is TLS, it just can't tell.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


class Credentials:
    """aiosmtpd's authenticator: one user, a password the test may change, and the mechanisms clients used."""

    def __init__(self) -> None:
        self.password = PASSWORD
        self.mechanisms: list[str] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        self.mechanisms.append(mechanism)
        accepted = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == USER.encode()
            and auth_data.password == self.password.encode()
        )
        # handled=False: aiosmtpd answers for us, 235 or "535 5.7.8 Authentication credentials invalid".
        return AuthResult(success=accepted, handled=False)


@dataclass
class Relay:
    sink: SmtpSink
    credentials: Credentials
    mode: str


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    return trustme.CA(organization_name="Not the relay's CA")


def pem_file(tmp_path: Path, name: str, blob: trustme.Blob) -> Path:
    path = tmp_path / name
    blob.write_to_path(str(path))
    return path


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    return pem_file(tmp_path, "relay-ca.pem", ca.cert_pem)


@pytest.fixture
def relays(ca: trustme.CA) -> Iterator[Callable[..., Relay]]:
    """Start relays: `starttls` (STARTTLS required, then AUTH) or `implicit` (TLS from the first byte, port 465
    style); their certificate from `issuer` for `identities`; optionally wanting a client certificate."""
    started: list[SmtpSink] = []

    def start(
        mode: str = "starttls",
        *,
        issuer: trustme.CA | None = None,
        identities: tuple[str, ...] = ("127.0.0.1",),
        mechanisms: tuple[str, ...] = MECHANISMS,
        auth: bool = True,
        client_ca: trustme.CA | None = None,
    ) -> Relay:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        (issuer or ca).issue_cert(*identities).configure_cert(context)
        if client_ca is not None:
            client_ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        credentials = Credentials()
        options: dict[str, Any] = {}
        if auth:
            excluded = [m for m in MECHANISMS if m not in mechanisms]
            options = {"authenticator": credentials, "auth_required": True, "auth_exclude_mechanism": excluded}
        if mode == "starttls":
            sink = SmtpSink(tls_context=context, require_starttls=True, **options)
        else:
            # aiosmtpd only knows TLS it started itself (STARTTLS): on an implicit-TLS socket it would hold AUTH
            # back as if the line were in clear text.
            sink = SmtpSink(ssl_context=context, auth_require_tls=False, **options)
        started.append(sink.start())
        return Relay(sink, credentials, mode)

    yield start
    for sink in started:
        sink.stop()


def relay_settings(tmp_path: Path, relay: Relay, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "SMTP_STARTTLS": relay.mode == "starttls",
        "SMTP_TLS": relay.mode == "implicit",
        "SMTP_USERNAME": USER,
        "SMTP_PASSWORD": PASSWORD,
        "LOG_LEVEL": "DEBUG",
        "MAX_ATTEMPTS": 50,
    }
    values.update(overrides)
    return make_settings(tmp_path, relay.sink.port, **values)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.exc_text or ''}")


@dataclass
class Watched:
    """The running service, with every log event and line from its start to its stop and every answer it gave."""

    service: Service
    events: list[dict[str, Any]]
    lines: list[str]
    answers: list[str] = field(default_factory=list)

    async def get(self, path: str) -> Any:
        response = await self.service.client.get(path)
        self.answers.append(response.text)
        return response.json()

    async def post(self) -> str:
        response = await self.service.post(**MAIL)
        self.answers.append(response.text)
        assert response.status_code == 202, response.text
        notification_id: str = response.json()["id"]
        return notification_id

    async def ready(self) -> Any:
        return await self.get("/health/ready")

    async def until(self, notification_id: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            body: dict[str, Any] = await self.get(f"/v1/notifications/{notification_id}")
            if done(body):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"notification never got there: {body}")
            await asyncio.sleep(0.02)

    async def retried(self, notification_id: str) -> dict[str, Any]:
        """Tried twice and still waiting: neither sent nor given up on."""
        body = await self.until(notification_id, lambda b: b["attempts"] >= 2)
        assert body["status"] in ("queued", "sending"), body
        return body

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]

    async def assert_password_never_shown(self) -> None:
        for path in ("/v1/notifications", "/v1/stats", "/metrics"):
            response = await self.service.client.get(path)
            self.answers.append(response.text)
        shown = [repr(self.events), *self.lines, *self.answers]
        for form in secret_forms(USER):
            for text in shown:
                assert form not in text


@asynccontextmanager
async def watched(settings: Settings) -> AsyncIterator[Watched]:
    app = create_app(settings)
    # After create_app, which sets up logging (and would drop a handler added before it).
    handler = _Lines()
    logging.getLogger().addHandler(handler)
    try:
        with captured_events() as events:
            async with LifespanManager(app, startup_timeout=10, shutdown_timeout=30) as manager:
                transport = httpx.ASGITransport(app=manager.app)
                async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
                    yield Watched(Service(app, client), events, handler.lines)
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_tls_and_auth_with_the_relays_ca_trusted_sends(
    tmp_path: Path, relays: Callable[..., Relay], ca_file: Path, mode: str, mechanism: str
) -> None:
    relay = relays(mode, mechanisms=(mechanism,))
    async with watched(relay_settings(tmp_path, relay, SMTP_CA_FILE=ca_file)) as watch:
        sent = await watch.until(await watch.post(), lambda b: b["status"] == "sent")
        ready = await watch.ready()
        await watch.assert_password_never_shown()

    assert sent["attempts"] == 1
    assert [mail.rcpt_tos for mail in relay.sink.received] == [MAIL["to"]]
    assert set(relay.credentials.mechanisms) == {mechanism}
    assert ready["status"] == "pass"
    assert ready["details"]["smtp"] == {
        "reason": None,
        "error": None,
        "tls": mode,
        "verify_certs": True,
        "warnings": [],
    }


async def test_the_ca_file_is_trusted_by_the_smtp_connection_only(
    tmp_path: Path, relays: Callable[..., Relay], ca_file: Path
) -> None:
    relay = relays("implicit")
    process_wide = os.environ.get("SSL_CERT_FILE")
    async with watched(relay_settings(tmp_path, relay, SMTP_CA_FILE=ca_file)) as watch:
        await watch.until(await watch.post(), lambda b: b["status"] == "sent")
        await watch.assert_password_never_shown()

        # Anything else in the process that opens TLS still trusts what it trusted before, not the relay's CA.
        assert os.environ.get("SSL_CERT_FILE") == process_wide
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", relay.sink.port, ssl=ssl.create_default_context())


@pytest.mark.parametrize("trusted", ["system CAs", "another CA file"])
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_a_certificate_from_an_unknown_ca_is_not_sent_but_retried_and_readiness_says_why(
    tmp_path: Path, relays: Callable[..., Relay], other_ca: trustme.CA, mode: str, trusted: str
) -> None:
    relay = relays(mode)
    overrides = {"SMTP_CA_FILE": pem_file(tmp_path, "other.pem", other_ca.cert_pem)} if trusted != "system CAs" else {}
    async with watched(relay_settings(tmp_path, relay, **overrides)) as watch:
        retried = await watch.retried(await watch.post())
        ready = await watch.ready()
        await watch.assert_password_never_shown()

    assert relay.sink.received == []
    assert relay.credentials.mechanisms == [], "no login may go to a server whose certificate was refused"
    assert "CERTIFICATE_VERIFY_FAILED" in retried["last_error"]
    assert "unable to get local issuer certificate" in retried["last_error"]
    assert "SMTP_CA_FILE" in retried["last_error"]
    assert ready["status"] == "warn"
    assert ready["checks"]["smtp"] == "fail"
    assert ready["details"]["smtp"]["reason"] == "certificate verification failed"
    assert "unable to get local issuer certificate" in ready["details"]["smtp"]["error"]


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_a_host_name_the_certificate_does_not_list_is_not_sent_but_retried_and_readiness_says_why(
    tmp_path: Path, relays: Callable[..., Relay], ca_file: Path, mode: str
) -> None:
    relay = relays(mode, identities=("relay.example.test",))
    settings = relay_settings(tmp_path, relay, SMTP_HOST="localhost", SMTP_CA_FILE=ca_file)
    async with watched(settings) as watch:
        retried = await watch.retried(await watch.post())
        ready = await watch.ready()
        await watch.assert_password_never_shown()

    assert relay.sink.received == []
    assert "CERTIFICATE_VERIFY_FAILED" in retried["last_error"]
    assert "Hostname mismatch, certificate is not valid for 'localhost'" in retried["last_error"]
    assert "SMTP_HOST" in retried["last_error"]
    assert ready["status"] == "warn"
    assert ready["details"]["smtp"]["reason"] == "certificate verification failed"
    assert "Hostname mismatch" in ready["details"]["smtp"]["error"]


async def test_a_refused_login_keeps_mail_queued_fails_readiness_and_is_logged_once_per_change(
    tmp_path: Path, relays: Callable[..., Relay], ca_file: Path
) -> None:
    relay = relays("starttls")
    relay.credentials.password = "what the relay expects now"
    async with watched(relay_settings(tmp_path, relay, SMTP_CA_FILE=ca_file, SEND_CONCURRENCY=2)) as watch:
        watch.service.app.state.smtp_probe.ttl_seconds = 0  # every readiness call probes again
        first, second = await watch.post(), await watch.post()
        retried = [await watch.retried(first), await watch.retried(second)]
        refused = [await watch.ready(), await watch.ready()]
        refused_events = len(watch.named("smtp_login_refused"))

        relay.credentials.password = PASSWORD  # the operator fixed it on the relay's side
        sent = [await watch.until(n, lambda b: b["status"] == "sent") for n in (first, second)]
        passing = await watch.ready()
        accepted_events = len(watch.named("smtp_login_accepted"))

        relay.credentials.password = "rotated again"
        refused_again = await watch.ready()
        await watch.assert_password_never_shown()

    for body in retried:
        assert "535 5.7.8 Authentication credentials invalid" in body["last_error"]
        assert "check SMTP_USERNAME and SMTP_PASSWORD" in body["last_error"]
    for body in [*refused, refused_again]:
        assert body["status"] == "warn"
        assert body["checks"]["smtp"] == "fail"
        assert body["details"]["smtp"]["reason"] == "authentication failed"
        assert "535" in body["details"]["smtp"]["error"]
    assert [body["status"] for body in sent] == ["sent", "sent"]
    assert passing["status"] == "pass"
    # Several workers, attempts and probes saw the refusal: one line per change of state, not per attempt.
    assert refused_events == 1
    assert accepted_events == 1
    events = watch.named("smtp_login_refused")
    assert len(events) == 2
    assert {e["log_level"] for e in events} == {"error"}
    assert "535" in events[0]["smtp_reply"]


async def test_a_relay_that_wants_starttls_before_auth_names_smtp_starttls(
    tmp_path: Path, relays: Callable[..., Relay]
) -> None:
    relay = relays("starttls")
    async with watched(relay_settings(tmp_path, relay, SMTP_STARTTLS=False)) as watch:
        retried = await watch.retried(await watch.post())
        ready = await watch.ready()
        await watch.assert_password_never_shown()

    assert relay.sink.received == []
    assert relay.credentials.mechanisms == [], "no password may go out in clear text"
    assert "SMTP_STARTTLS" in retried["last_error"]
    assert ready["details"]["smtp"]["reason"] == "STARTTLS required"
    assert "set SMTP_STARTTLS=true" in ready["details"]["smtp"]["error"]


async def test_a_relay_that_wants_starttls_before_mail_names_smtp_starttls_and_keeps_the_mail(
    tmp_path: Path, relays: Callable[..., Relay]
) -> None:
    relay = relays("starttls", auth=False)
    settings = relay_settings(tmp_path, relay, SMTP_STARTTLS=False, SMTP_USERNAME=None, SMTP_PASSWORD=None)
    async with watched(settings) as watch:
        retried = await watch.retried(await watch.post())
        ready = await watch.ready()
        await watch.assert_password_never_shown()

    # "530 Must issue a STARTTLS command first" is a 5xx, yet no fault of the mail's: retried, not failed.
    assert relay.sink.received == []
    assert "530" in retried["last_error"]
    assert "SMTP_STARTTLS is off: set SMTP_STARTTLS=true" in retried["last_error"]
    assert ready["status"] == "pass"
    assert ready["details"]["smtp"]["warnings"] == [
        "the server offers STARTTLS but SMTP_STARTTLS is off: mail and login go in clear text"
    ]


async def test_starttls_asked_of_a_server_without_it_says_so(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, SMTP_STARTTLS=True, MAX_ATTEMPTS=50)
    async with watched(settings) as watch:
        retried = await watch.retried(await watch.post())
        ready = await watch.ready()

    assert smtp_sink.received == []
    assert "offers no STARTTLS" in retried["last_error"]
    assert ready["details"]["smtp"]["reason"] == "STARTTLS not offered"


async def test_implicit_tls_asked_of_a_plain_port_says_so(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, SMTP_TLS=True, MAX_ATTEMPTS=50)
    async with watched(settings) as watch:
        retried = await watch.retried(await watch.post())
        ready = await watch.ready()

    assert smtp_sink.received == []
    assert "use SMTP_STARTTLS=true, not SMTP_TLS" in retried["last_error"]
    assert ready["details"]["smtp"]["reason"] == "TLS handshake failed"


@pytest.mark.parametrize("key_file", ["separate", "in the certificate file"])
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_a_relay_that_wants_a_client_certificate_gets_it(
    tmp_path: Path, relays: Callable[..., Relay], ca: trustme.CA, ca_file: Path, mode: str, key_file: str
) -> None:
    client_ca = trustme.CA(organization_name="Clients")
    relay = relays(mode, client_ca=client_ca)
    client = client_ca.issue_cert("notifier.example.test")
    if key_file == "separate":
        files = {
            "SMTP_CLIENT_CERT_FILE": pem_file(tmp_path, "client.pem", client.cert_chain_pems[0]),
            "SMTP_CLIENT_KEY_FILE": pem_file(tmp_path, "client.key", client.private_key_pem),
        }
    else:
        files = {"SMTP_CLIENT_CERT_FILE": pem_file(tmp_path, "client.pem", client.private_key_and_cert_chain_pem)}
    async with watched(relay_settings(tmp_path, relay, SMTP_CA_FILE=ca_file, **files)) as watch:
        await watch.until(await watch.post(), lambda b: b["status"] == "sent")
        await watch.assert_password_never_shown()

    assert len(relay.sink.received) == 1


async def test_the_dispatchers_own_process_connects_with_the_same_tls_settings(
    tmp_path: Path, relays: Callable[..., Relay], ca_file: Path
) -> None:
    client_ca = trustme.CA(organization_name="Clients")
    relay = relays("starttls", client_ca=client_ca)
    client = pem_file(
        tmp_path, "client.pem", client_ca.issue_cert("notifier.example.test").private_key_and_cert_chain_pem
    )
    settings = relay_settings(
        tmp_path, relay, SMTP_CA_FILE=ca_file, SMTP_CLIENT_CERT_FILE=client, DISPATCHER_PROCESS=True
    )
    async with watched(settings) as watch:
        await watch.until(await watch.post(), lambda b: b["status"] == "sent")
        await watch.assert_password_never_shown()

    assert len(relay.sink.received) == 1


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_without_its_client_certificate_a_mutual_tls_relay_gets_nothing_and_the_error_says_so(
    tmp_path: Path, relays: Callable[..., Relay], ca_file: Path, mode: str
) -> None:
    relay = relays(mode, client_ca=trustme.CA(organization_name="Clients"))
    async with watched(relay_settings(tmp_path, relay, SMTP_CA_FILE=ca_file)) as watch:
        retried = await watch.retried(await watch.post())
        ready = await watch.ready()
        await watch.assert_password_never_shown()

    assert relay.sink.received == []
    assert relay.credentials.mechanisms == []
    assert "SMTP_CLIENT_CERT_FILE" in retried["last_error"]
    assert ready["checks"]["smtp"] == "fail"
    assert ready["details"]["smtp"]["reason"] == "closed by the server"


async def test_unchecked_certificates_send_but_warn_at_start_and_in_readiness(
    tmp_path: Path, relays: Callable[..., Relay], other_ca: trustme.CA
) -> None:
    relay = relays("starttls", issuer=other_ca, identities=("relay.example.test",))
    async with watched(relay_settings(tmp_path, relay, SMTP_VERIFY_CERTS=False)) as watch:
        await watch.until(await watch.post(), lambda b: b["status"] == "sent")
        ready = await watch.ready()
        await watch.assert_password_never_shown()

    [warning] = watch.named("smtp_certificate_checks_disabled")
    assert warning["log_level"] == "warning"
    assert "SMTP_VERIFY_CERTS" in warning["detail"]
    assert ready["status"] == "pass"
    assert ready["details"]["smtp"]["verify_certs"] is False
    assert any("SMTP_VERIFY_CERTS is false" in text for text in ready["details"]["smtp"]["warnings"])
