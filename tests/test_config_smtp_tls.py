"""The SMTP connection's TLS files are checked at start: one that cannot be read or used stops the start with one
line naming the variable, never at the first mail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from service.config import Settings, describe_errors
from tests.test_config import start_with


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def files(tmp_path: Path, ca: trustme.CA) -> dict[str, Path]:
    """PEM files of every kind, good and bad."""
    client = ca.issue_cert("notifier.example.test")
    other = ca.issue_cert("someone-else.example.test")
    blobs = {
        "ca.pem": ca.cert_pem.bytes(),
        "client.pem": client.cert_chain_pems[0].bytes(),
        "client.key": client.private_key_pem.bytes(),
        "combined.pem": client.private_key_and_cert_chain_pem.bytes(),
        "other.key": other.private_key_pem.bytes(),
        "junk.pem": b"not a certificate\n",
        "encrypted.key": serialization.load_pem_private_key(client.private_key_pem.bytes(), None).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        ),
    }
    for name, blob in blobs.items():
        (tmp_path / name).write_bytes(blob)
    return {name: tmp_path / name for name in blobs} | {"missing.pem": tmp_path / "missing.pem", "dir": tmp_path}


def refusal(**values: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, **values)  # type: ignore[call-arg]
    [line] = describe_errors(caught.value)
    return line


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"SMTP_CA_FILE": "missing.pem"},
            "config error: SMTP_CA_FILE: not a readable PEM file of CA certificates: [Errno 2] No such file",
        ),
        ({"SMTP_CA_FILE": "dir"}, "config error: SMTP_CA_FILE: not a readable PEM file of CA certificates: [Errno 21]"),
        ({"SMTP_CA_FILE": "junk.pem"}, "config error: SMTP_CA_FILE: not a readable PEM file of CA certificates: [X509"),
        ({"SMTP_CLIENT_CERT_FILE": "missing.pem"}, "config error: SMTP_CLIENT_CERT_FILE: cannot read it: [Errno 2]"),
        ({"SMTP_CLIENT_CERT_FILE": "junk.pem"}, "config error: SMTP_CLIENT_CERT_FILE: no PEM block"),
        (
            {"SMTP_CLIENT_CERT_FILE": "client.pem", "SMTP_CLIENT_KEY_FILE": "encrypted.key"},
            "config error: SMTP_CLIENT_KEY_FILE: the key is encrypted",
        ),
        (
            {"SMTP_CLIENT_CERT_FILE": "client.pem", "SMTP_CLIENT_KEY_FILE": "other.key"},
            "SMTP_CLIENT_CERT_FILE and SMTP_CLIENT_KEY_FILE are not a certificate and its key",
        ),
        (
            {"SMTP_CLIENT_CERT_FILE": "client.pem"},
            "SMTP_CLIENT_CERT_FILE holds no private key: set SMTP_CLIENT_KEY_FILE too",
        ),
        ({"SMTP_CLIENT_KEY_FILE": "client.key"}, "SMTP_CLIENT_KEY_FILE is set without SMTP_CLIENT_CERT_FILE"),
        ({"SMTP_CA_FILE": "ca.pem", "SMTP_VERIFY_CERTS": False}, "SMTP_VERIFY_CERTS=false would not check"),
        (
            {"SMTP_CA_FILE": "ca.pem", "SMTP_STARTTLS": False},
            "SMTP_CA_FILE: used by TLS only, which is off: set SMTP_STARTTLS=true (587) or SMTP_TLS=true (465)",
        ),
    ],
)
def test_a_tls_file_that_cannot_be_used_is_refused_in_one_line(
    files: dict[str, Path], values: dict[str, Any], expected: str
) -> None:
    values = {"SMTP_STARTTLS": True} | {k: files[v] if isinstance(v, str) else v for k, v in values.items()}

    assert expected in refusal(**values)


def test_a_missing_ca_file_stops_the_start_without_a_traceback(tmp_path: Path) -> None:
    result = start_with({"SMTP_STARTTLS": "true", "SMTP_CA_FILE": "/nowhere/relay-ca.pem"}, tmp_path)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "config error: SMTP_CA_FILE: not a readable PEM file of CA certificates: [Errno 2] No such file or directory"
        " (got '/nowhere/relay-ca.pem')"
    ]


@pytest.mark.parametrize(
    "values",
    [
        {"SMTP_CA_FILE": "ca.pem"},
        {"SMTP_CLIENT_CERT_FILE": "client.pem", "SMTP_CLIENT_KEY_FILE": "client.key"},
        {"SMTP_CLIENT_CERT_FILE": "combined.pem"},
    ],
)
def test_usable_tls_files_are_taken(files: dict[str, Path], values: dict[str, str]) -> None:
    settings = Settings(_env_file=None, SMTP_TLS=True, **{k: files[v] for k, v in values.items()})  # type: ignore[call-arg]

    for name, file in values.items():
        assert getattr(settings, name) == files[file]


def test_empty_tls_files_are_unset_and_certificates_are_checked_by_default() -> None:
    settings = Settings(_env_file=None, SMTP_CA_FILE="", SMTP_CLIENT_CERT_FILE="", SMTP_CLIENT_KEY_FILE="")  # type: ignore[call-arg]

    assert (settings.SMTP_CA_FILE, settings.SMTP_CLIENT_CERT_FILE, settings.SMTP_CLIENT_KEY_FILE) == (None, None, None)
    assert settings.SMTP_VERIFY_CERTS is True
