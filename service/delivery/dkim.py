"""DKIM: the key (DKIM_PRIVATE_KEY_FILE), its DNS record, and the signature each mail gets in the dispatcher.

`python -m service.delivery.dkim` prints the TXT record to publish for the configured key.
"""

from __future__ import annotations

import base64
import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
import structlog
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from service.config import Settings, load_settings

log = structlog.get_logger("service.delivery.dkim")

# RFC 8301: verifiers must accept 1024 to 4096 bits; signers should use 2048 or more, and big receivers treat
# shorter keys as no signature.
RSA_BITS = (2048, 4096)
# Relaxed/relaxed survives what relays do to whitespace and header folding; simple breaks on a re-folded line.
CANONICALIZE = (b"relaxed", b"relaxed")
# Signed twice (when present), so that nobody can add a second one that a reader would show instead.
OVERSIGNED = (b"from", b"to", b"cc", b"subject", b"reply-to", b"date", b"message-id")


class DkimKeyError(ValueError):
    """The key file cannot be a DKIM key; the message says why, for the one line at start."""


@dataclass(frozen=True, slots=True)
class DkimKey:
    algorithm: bytes
    # What dkimpy's sign() reads: PKCS#1 PEM for RSA, the base64 seed for Ed25519.
    dkimpy_key: bytes
    public_key: bytes
    rsa_key: rsa.RSAPrivateKey | None = None

    def dns_record(self) -> str:
        """The TXT record's value (RFC 6376 3.6.1, RFC 8463 for Ed25519)."""
        kind = "rsa" if self.rsa_key is not None else "ed25519"
        return f"v=DKIM1; k={kind}; p={base64.b64encode(self.public_key).decode()}"


def load_key(path: Path) -> DkimKey:
    """Read and check the PEM key; raise DkimKeyError saying what is wrong with it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DkimKeyError(f"cannot read the key file: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise DkimKeyError(
            "the key is encrypted; DKIM needs it unencrypted (openssl pkey -in key.pem -out plain.pem)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise DkimKeyError("not a PEM private key (-----BEGIN PRIVATE KEY-----)") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if not RSA_BITS[0] <= key.key_size <= RSA_BITS[1]:
            raise DkimKeyError(f"an RSA key of {key.key_size} bits; DKIM needs {RSA_BITS[0]} to {RSA_BITS[1]}")
        pkcs1 = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return DkimKey(b"rsa-sha256", pkcs1, spki, rsa_key=key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        raw_public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return DkimKey(b"ed25519-sha256", base64.b64encode(seed), raw_public)
    kind = type(key).__name__.removeprefix("_").removesuffix("PrivateKey") or "other"
    raise DkimKeyError(f"a key of type {kind}; DKIM signs with RSA ({RSA_BITS[0]} bits or more) or Ed25519 only")


class _OpenSslSignature:
    """The RSA step done by OpenSSL, handed to dkimpy where it hands an Ed25519 key the digest to sign."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.key = key
        self.signature = b""

    def sign(self, digest: bytes) -> _OpenSslSignature:
        self.signature = self.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        return self


class _DkimWithOpenSslRsa(dkim.DKIM):  # type: ignore[misc]
    """dkimpy's signer, which chooses the headers, canonicalizes, hashes and writes the header, with its RSA step
    in OpenSSL: dkimpy's own is pure Python, ~13 ms a mail against ~1 (docs/production-mail.md). PKCS#1 v1.5 is
    deterministic, so the signature is byte for byte dkimpy's (tests/delivery/test_dkim.py checks it)."""

    def __init__(self, message: bytes, key: rsa.RSAPrivateKey) -> None:
        super().__init__(message, signature_algorithm=b"rsa-sha256")
        self._openssl = _OpenSslSignature(key)

    def gen_header(
        self, fields: Any, include_headers: Any, canon_policy: Any, header_name: Any, pk: Any, standardize: bool = False
    ) -> bytes:
        # gen_header signs with `pk.sign(digest).signature` on its Ed25519 branch: the tags are already written
        # (a=rsa-sha256), so only the branch changes.
        self.signature_algorithm = b"ed25519-sha256"
        try:
            header: bytes = super().gen_header(
                fields, include_headers, canon_policy, header_name, self._openssl, standardize
            )
        finally:
            self.signature_algorithm = b"rsa-sha256"
        return header


class DkimSigner:
    """Signs a mail's wire bytes: its DKIM-Signature header goes in front of them."""

    def __init__(self, domain: str, selector: str, key: DkimKey) -> None:
        self.domain = domain.encode("ascii")
        self.selector = selector.encode("ascii")
        self.key = key

    @property
    def record_name(self) -> str:
        return f"{self.selector.decode()}._domainkey.{self.domain.decode()}"

    def sign(self, data: bytes) -> bytes:
        """The mail with its signature; raises ValueError when dkimpy refuses the mail (no From header)."""
        signer: dkim.DKIM
        if self.key.rsa_key is not None:
            signer = _DkimWithOpenSslRsa(data, self.key.rsa_key)
        else:
            signer = dkim.DKIM(data, signature_algorithm=self.key.algorithm)
        signer.add_frozen(OVERSIGNED)
        try:
            header: bytes = signer.sign(self.selector, self.domain, self.key.dkimpy_key, canonicalize=CANONICALIZE)
        except dkim.DKIMException as exc:
            raise ValueError(f"DKIM: {exc}") from exc
        return header + data


@functools.lru_cache(maxsize=8)
def _signer(domain: str, selector: str, path: Path) -> DkimSigner:
    # Once per process: every worker's connection signs with the same parsed key.
    return DkimSigner(domain, selector, load_key(path))


def signer_for(settings: Settings) -> DkimSigner | None:
    """The signer the settings ask for, or None when DKIM is off; raises DkimKeyError for a bad key."""
    if settings.DKIM_DOMAIN is None or settings.DKIM_SELECTOR is None or settings.DKIM_PRIVATE_KEY_FILE is None:
        return None
    return _signer(settings.DKIM_DOMAIN, settings.DKIM_SELECTOR, settings.DKIM_PRIVATE_KEY_FILE)


_PROBE = (
    b"From: probe@example.com\r\nTo: probe@example.com\r\nSubject: probe\r\n"
    b"Message-ID: <probe@example.com>\r\n\r\nprobe\r\n"
)


def _signer_or_exit(settings: Settings) -> tuple[DkimSigner, float] | None:
    """The signer and what one signature cost, or None when DKIM is off; a key that cannot sign stops the
    start with one line, like a bad setting does."""
    try:
        signer = signer_for(settings)
        if signer is None:
            return None
        signer.sign(_PROBE)
        # Timed the second time: the first one pays for dkimpy's and OpenSSL's set-up.
        started = time.perf_counter()
        signer.sign(_PROBE)
    except ValueError as exc:
        print(
            f"config error: DKIM_PRIVATE_KEY_FILE: {exc} (got {str(settings.DKIM_PRIVATE_KEY_FILE)!r})",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    return signer, time.perf_counter() - started


def check_dkim_or_exit(settings: Settings) -> None:
    """At start, in the HTTP process: the key is read and signs once, or the service does not start."""
    loaded = _signer_or_exit(settings)
    if loaded is None:
        return
    signer, seconds = loaded
    from_domain = settings.MAIL_FROM.rpartition("@")[2].rstrip(">").strip().lower()
    domain = signer.domain.decode().lower()
    if from_domain != domain and not from_domain.endswith("." + domain):
        # Valid DKIM, but DMARC counts it only when d= is MAIL_FROM's domain or one of its parents.
        log.warning("dkim_domain_not_aligned", dkim_domain=domain, mail_from_domain=from_domain)
    log.info(
        "dkim_key_loaded",
        algorithm=signer.key.algorithm.decode(),
        record=signer.record_name,
        sign_ms=round(seconds * 1000, 2),
    )


def main() -> None:
    """Print the DNS record to publish for DKIM_PRIVATE_KEY_FILE, in zone file syntax."""
    loaded = _signer_or_exit(load_settings())
    if loaded is None:
        print("config error: settings: set DKIM_DOMAIN, DKIM_SELECTOR and DKIM_PRIVATE_KEY_FILE", file=sys.stderr)
        raise SystemExit(2)
    signer, _ = loaded
    value = signer.key.dns_record()
    # One TXT string holds at most 255 bytes (RFC 1035): a 2048-bit key's record is split into several.
    strings = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
    print(f"{signer.record_name}. IN TXT ( {strings} )")


if __name__ == "__main__":
    main()
