"""What a DKIM signature costs per mail, in CPU: the mail's bytes built as the dispatcher builds them, then signed
with a fresh RSA 2048 key (OpenSSL's RSA step, as the service does, and dkimpy's own pure-Python one) and an
Ed25519 key. Medians of `--rounds` runs of `--count` mails each.

    python -m benchmarks.dkim_cost [--count 500] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from service.delivery.dkim_signer import CANONICALIZE, OVERSIGNED, DkimSigner, load_key
from service.delivery.mime import build_mail_bytes
from service.outbox import Notification

MAIL = Notification(
    id="bench",
    to=["Ada Lovelace <ada@example.com>"],
    subject="Your receipt",
    text="Hello Ada,\n\nthank you for your order.\n" * 4,
    html="<p>Hello Ada,</p><p>thank you for your order.</p>\n" * 4,
    message_id="<bench@notifier.example.com>",
    created_at=1764075000.0,
)
MAIL_FROM = "Notifier <notifier@example.com>"


def write(path: Path, key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> Path:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    return path


def per_mail_us(work: Callable[[], object], count: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(count):
            work()
        times.append((time.process_time() - started) / count * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rsa_key = load_key(
            write(Path(folder) / "rsa.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048))
        )
        ed_key = load_key(write(Path(folder) / "ed.pem", ed25519.Ed25519PrivateKey.generate()))
    rsa_signer = DkimSigner("example.com", "bench", rsa_key)
    ed_signer = DkimSigner("example.com", "bench", ed_key)

    def dkimpy_alone() -> bytes:
        data = build_mail_bytes(MAIL, MAIL_FROM)
        signer = dkim.DKIM(data)
        signer.add_frozen(OVERSIGNED)
        return bytes(signer.sign(b"bench", b"example.com", rsa_key.dkimpy_key, canonicalize=CANONICALIZE)) + data

    cases: dict[str, Callable[[], object]] = {
        "build only (no DKIM)": lambda: build_mail_bytes(MAIL, MAIL_FROM),
        "build + RSA 2048 (the service: dkimpy, RSA step in OpenSSL)": lambda: rsa_signer.sign(
            build_mail_bytes(MAIL, MAIL_FROM)
        ),
        "build + RSA 2048 (dkimpy alone, pure-Python RSA)": dkimpy_alone,
        "build + Ed25519 (dkimpy with PyNaCl)": lambda: ed_signer.sign(build_mail_bytes(MAIL, MAIL_FROM)),
    }
    print(f"CPU per mail, median of {args.rounds} rounds of {args.count} mails (text + html, {len(cases)} cases)")
    for label, work in cases.items():
        work()  # the first call pays for imports and set-up
        print(f"  {label:62} {per_mail_us(work, args.count, args.rounds):9.0f} µs")


if __name__ == "__main__":
    main()
