"""DKIM: every mail that reaches the SMTP server carries a signature dkimpy's own verifier accepts against the DNS
record `python -m service.delivery.dkim` prints; a key that cannot sign stops the start with one line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from service.delivery.dkim_signer import OVERSIGNED, DkimSigner, load_key
from service.delivery.smtp import SmtpConnection
from service.intake.request import ONE_CLICK
from tests.conftest import MAIL, make_settings, running
from tests.delivery.test_smtp import MAILS, OptionsHandler
from tests.smtp_sink import Received, SmtpSink, free_port

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "example.com"
SELECTOR = "notify2026"

ONE_CLICK_HEADERS = {"List-Unsubscribe": "<https://example.com/unsubscribe/42>", "List-Unsubscribe-Post": ONE_CLICK}


def write_key(path: Path, key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    # PKCS#8, as `openssl genpkey` writes it.
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


KEYS = {
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}


@pytest.fixture(params=list(KEYS))
def key_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return write_key(tmp_path / f"{request.param}.pem", KEYS[request.param]())


def dkim_env(key_file: Path) -> dict[str, str]:
    return {"DKIM_DOMAIN": DOMAIN, "DKIM_SELECTOR": SELECTOR, "DKIM_PRIVATE_KEY_FILE": str(key_file)}


def run_service_module(module: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # Outside the checkout, so that a developer's .env is not read.
    return subprocess.run(
        [sys.executable, "-c", f"import {module}"] if module == "service.main" else [sys.executable, "-m", module],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def published_record(key_file: Path, cwd: Path) -> bytes:
    """The TXT record as `python -m service.delivery.dkim` prints it for the zone file, its strings joined."""
    result = run_service_module("service.delivery.dkim", dkim_env(key_file), cwd)
    assert result.returncode == 0, result.stderr
    name, strings = re.fullmatch(r"(\S+) IN TXT \( (.*) \)\n", result.stdout).groups()  # type: ignore[union-attr]
    assert name == f"{SELECTOR}._domainkey.{DOMAIN}."
    parts = re.findall(r'"([^"]*)"', strings)
    assert all(len(part) <= 255 for part in parts)
    return "".join(parts).encode()


def verify(received: Received, record: bytes) -> bool:
    """dkimpy's verifier, with the record served as the DNS answer for the one name it may ask for."""
    asked: list[bytes] = []

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        asked.append(name)
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else b""

    verified = bool(dkim.verify(received.data, dnsfunc=dnsfunc))
    assert asked == [f"{SELECTOR}._domainkey.{DOMAIN}.".encode()]
    return verified


def signature_tags(data: bytes) -> dict[str, str]:
    header = re.search(rb"^DKIM-Signature:(.*?)\r\n(?! )", data, re.DOTALL | re.MULTILINE)
    assert header is not None, data[:200]
    unfolded = re.sub(r"\s+", "", header.group(1).decode())
    return dict(tag.split("=", 1) for tag in unfolded.split(";") if tag)


async def test_every_mail_the_sink_receives_verifies_with_the_published_record(
    key_file: Path, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    record = published_record(key_file, tmp_path)
    # The dispatcher in its own process, as in production: the key is read and used there.
    settings = make_settings(tmp_path, smtp_sink.port, DISPATCHER_PROCESS=True, **dkim_env(key_file))
    mails = [
        MAIL,
        {"to": ["Zoë <zoe@example.com>"], "cc": ["grace@example.com"], "subject": "Grüße", "text": "Hé", "html": "<b>"},
        {"to": ["ada@example.com"], "reply_to": "help@example.com", "subject": "x" * 200, "text": "a\n" * 500},
        # RFC 8058: one-click unsubscribe counts only when both of its headers are signed.
        {**MAIL, "to": ["list@example.com"], "headers": ONE_CLICK_HEADERS},
    ]
    async with running(settings) as service:
        for mail in mails:
            assert (await service.post(**mail)).status_code == 202
        received = await smtp_sink.wait_for(len(mails), timeout=30)

    algorithm = "rsa-sha256" if key_file.stem == "rsa" else "ed25519-sha256"
    for mail in received:
        assert verify(mail, record), mail.data[:400]
        tags = signature_tags(mail.data)
        assert (tags["a"], tags["c"], tags["d"], tags["s"]) == (algorithm, "relaxed/relaxed", DOMAIN, SELECTOR)
        signed = tags["h"].split(":")
        for name in ("from", "to", "subject", "date", "message-id", "mime-version", "content-type"):
            assert name in signed, (name, signed)
        # Headers a reader shows are signed once more than they occur: a second one added later breaks it.
        for name in OVERSIGNED:
            present = len(re.findall(rb"^" + name + rb":", mail.data, re.IGNORECASE | re.MULTILINE))
            assert signed.count(name.decode()) == (present + 1 if present else 0), (name, signed)
    # Cc and Reply-To of the second and third mails are covered (the workers take them in any order).
    [with_cc] = smtp_sink.to("grace@example.com")
    [with_reply_to] = [mail for mail in received if b"\r\nReply-To: " in mail.data]
    assert "cc" in signature_tags(with_cc.data)["h"].split(":")
    assert "reply-to" in signature_tags(with_reply_to.data)["h"].split(":")
    [with_list] = smtp_sink.to("list@example.com")
    assert {"list-unsubscribe", "list-unsubscribe-post"} <= set(signature_tags(with_list.data)["h"].split(":"))


async def test_a_changed_mail_no_longer_verifies(key_file: Path, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    # The verifier above is not one that accepts anything: the same check fails once a byte of body or a signed
    # header changes.
    record = published_record(key_file, tmp_path)
    settings = make_settings(tmp_path, smtp_sink.port, **dkim_env(key_file))
    async with running(settings) as service:
        assert (await service.post(**MAIL)).status_code == 202
        [mail] = await smtp_sink.wait_for(1)

    assert verify(mail, record)
    body_changed = Received(mail.mail_from, mail.rcpt_tos, mail.data.replace(b"Hi Ada", b"Hi Eve"))
    subject_changed = Received(mail.mail_from, mail.rcpt_tos, mail.data.replace(b"Subject: Hello", b"Subject: Pay"))
    assert not verify(body_changed, record)
    assert not verify(subject_changed, record)


@pytest.fixture(params=["8bitmime", "7bit"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[int, OptionsHandler]]:
    handler = OptionsHandler(eight_bit=request.param == "8bitmime")
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=10, enable_SMTPUTF8=True)
    controller.start()
    yield port, handler
    controller.stop()


@pytest.mark.parametrize("name", ["ascii", "non-ascii", "non-ascii-address"])
async def test_the_mail_is_signed_as_it_leaves_also_when_re_encoded_for_a_7bit_server(
    name: str, server: tuple[int, OptionsHandler], key_file: Path, tmp_path: Path
) -> None:
    port, handler = server
    mail = MAILS[name]
    record = load_key(key_file).dns_record().encode()
    connection = SmtpConnection(make_settings(tmp_path, port, **dkim_env(key_file)))
    try:
        await connection.send(mail)
    finally:
        await connection.quit()

    [received] = handler.received
    assert received.data.startswith(b"DKIM-Signature: ")
    assert verify(received, record)
    if not handler.eight_bit and name == "non-ascii":
        # The 7bit re-encode path: what was signed is what went out, not the 8bit original.
        assert received.data.isascii()


def test_the_rsa_signature_is_the_one_dkimpy_computes_itself(tmp_path: Path) -> None:
    # OpenSSL does the RSA step; PKCS#1 v1.5 is deterministic, so dkimpy's pure-Python result must be the same
    # bytes. A dkimpy that signs another way (its gen_header changed) fails here.
    key = load_key(write_key(tmp_path / "rsa.pem", KEYS["rsa"]()))
    signer = DkimSigner(DOMAIN, SELECTOR, key)
    message = (
        b"From: Notifier <notifier@example.com>\r\nTo: ada@example.com\r\nSubject: Hello\r\n"
        b"Date: Tue, 25 Nov 2025 12:50:00 +0000\r\nMessage-ID: <a@example.com>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: text/plain; charset="utf-8"\r\n\r\nHi Ada\r\n'
    )
    for _ in range(3):
        ours = signer.sign(message)[: -len(message)]
        reference = dkim.DKIM(message)
        reference.add_frozen(OVERSIGNED)
        theirs = reference.sign(SELECTOR.encode(), DOMAIN.encode(), key.dkimpy_key, canonicalize=(b"relaxed",) * 2)
        if signature_tags(ours)["t"] == signature_tags(theirs)["t"]:  # both within the same second
            assert ours == theirs
            return
    raise AssertionError("three signatures in a row straddled a second")


def test_the_key_check_accepts_rsa_2048_to_4096_and_ed25519(tmp_path: Path) -> None:
    assert load_key(write_key(tmp_path / "a.pem", KEYS["rsa"]())).algorithm == b"rsa-sha256"
    big = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    assert load_key(write_key(tmp_path / "b.pem", big)).algorithm == b"rsa-sha256"
    assert load_key(write_key(tmp_path / "c.pem", KEYS["ed25519"]())).algorithm == b"ed25519-sha256"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
@pytest.mark.parametrize(
    "command",
    [
        "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out config/dkim.pem",
        "openssl genpkey -algorithm ed25519 -out config/dkim.pem",
    ],
)
def test_the_documented_openssl_commands_make_a_key_that_loads(command: str, tmp_path: Path) -> None:
    assert command in (ROOT / "docs/production-mail.md").read_text()
    (tmp_path / "config").mkdir()  # run from the project's folder, which has config/
    subprocess.run(command.split(), cwd=tmp_path, check=True, capture_output=True)
    assert load_key(tmp_path / "config/dkim.pem").dns_record().startswith("v=DKIM1; k=")


def bad_keys(tmp_path: Path) -> dict[str, tuple[dict[str, str], str]]:
    small = write_key(tmp_path / "small.pem", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    curve = write_key(tmp_path / "ec.pem", ec.generate_private_key(ec.SECP256R1()))
    (tmp_path / "garbage.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    (tmp_path / "encrypted.pem").write_bytes(
        KEYS["rsa"]().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret-passphrase"),
        )
    )
    return {
        "missing": (dkim_env(tmp_path / "nope.pem"), "cannot read the key file: No such file or directory"),
        "garbage": (dkim_env(tmp_path / "garbage.pem"), "not a PEM private key"),
        "encrypted": (dkim_env(tmp_path / "encrypted.pem"), "the key is encrypted; DKIM needs it unencrypted"),
        "rsa-1024": (dkim_env(small), "an RSA key of 1024 bits; DKIM needs 2048 to 4096"),
        "ec": (dkim_env(curve), "DKIM signs with RSA (2048 bits or more) or Ed25519 only"),
        "partial": (
            {"DKIM_DOMAIN": DOMAIN, "DKIM_SELECTOR": SELECTOR},
            "DKIM_DOMAIN, DKIM_SELECTOR and DKIM_PRIVATE_KEY_FILE are set together or not at all",
        ),
        "selector": ({**dkim_env(small), "DKIM_SELECTOR": "two words"}, "config error: DKIM_SELECTOR: "),
    }


@pytest.mark.parametrize("case", ["missing", "garbage", "encrypted", "rsa-1024", "ec", "partial", "selector"])
def test_a_key_that_cannot_sign_stops_the_start_with_one_clear_line(case: str, tmp_path: Path) -> None:
    env, expected = bad_keys(tmp_path)[case]
    result = run_service_module("service.main", env, tmp_path)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert expected in result.stderr
    if case not in ("partial", "selector"):
        assert result.stderr.startswith("config error: DKIM_PRIVATE_KEY_FILE: ")
