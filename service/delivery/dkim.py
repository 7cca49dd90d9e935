"""DKIM on or off: the signer the settings ask for, the key checked at start, and
`python -m service.delivery.dkim`, which prints the TXT record to publish for the configured key.

dkimpy and cryptography are imported only when DKIM is on: otherwise they would cost each of the service's two
processes 13 MB of RSS and 160 ms of start (measured).
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from service.config import Settings, load_settings

if TYPE_CHECKING:
    from service.delivery.dkim_signer import DkimSigner

log = structlog.get_logger("service.delivery.dkim")


@functools.lru_cache(maxsize=8)
def _signer(domain: str, selector: str, path: Path) -> DkimSigner:
    # Once per process: every worker's connection signs with the same parsed key.
    from service.delivery.dkim_signer import DkimSigner, load_key

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
    from_domain = settings.mail_from_domain()
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
