"""The DKIM signer: the key (PEM, RSA or Ed25519) read and checked, its DNS record, and the signature a mail's
wire bytes get. Imported only when DKIM is on (service/delivery/dkim.py)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

# RFC 8301: verifiers must accept 1024 to 4096 bits; signers should use 2048 or more, and big receivers treat
# shorter keys as no signature.
RSA_BITS = (2048, 4096)
# Relaxed/relaxed survives what relays do to whitespace and header folding; simple breaks on a re-folded line.
CANONICALIZE = (b"relaxed", b"relaxed")
# Signed twice (when present), so that nobody can add a second one that a reader would show instead. RFC 8058
# asks for List-Unsubscribe and List-Unsubscribe-Post in the signature: a receiver only offers one-click then.
OVERSIGNED = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"reply-to",
    b"date",
    b"message-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)


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
