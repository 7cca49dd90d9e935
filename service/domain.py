"""The words every layer shares: a notification's Status, a recipient's Refusal, and the SendOutcome the
delivery layer hands the dispatcher. Depends on nothing of the service's own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """Where a notification is: waiting (`queued`), being tried (`sending`), or done (`sent`, `failed`)."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


# What counts against the queue limit: every notification not sent or failed yet.
UNSENT = (Status.QUEUED, Status.SENDING)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A recipient the SMTP server refused, with its reply code and text."""

    address: str
    code: int
    message: str

    @property
    def for_good(self) -> bool:
        """5xx: asking again cannot help."""
        return self.code >= 500

    @property
    def for_now(self) -> bool:
        """4xx (greylisting, a full mailbox): worth asking again later."""
        return 400 <= self.code < 500

    def to_json(self) -> dict[str, Any]:
        """As it is stored and as the API shows it: `{address, code, message}`."""
        return {"address": self.address, "code": self.code, "message": self.message}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Refusal:
        return cls(address=value["address"], code=int(value["code"]), message=value["message"])


@dataclass(frozen=True, slots=True)
class SendTaken:
    """The server took the mail, for every recipient but those in `refused`."""

    smtp_reply: str
    refused: tuple[Refusal, ...] = ()


@dataclass(frozen=True, slots=True)
class SendFailed:
    """The server took the mail for nobody: `transient` when a later attempt may work.

    `code` is the server's reply code when it gave one (None for a lost connection, a timeout, an unsendable
    mail); `message` is what is recorded as the notification's last error."""

    message: str
    transient: bool
    code: int | None = None
    refused: tuple[Refusal, ...] = ()


# The outcome of one send, as the delivery layer hands it to the dispatcher.
SendOutcome = SendTaken | SendFailed


def mailbox_key(address: str) -> str:
    """An addr-spec as the suppression list compares it (RFC 5321 §2.4): the domain is case-insensitive, the
    local part is the receiving server's to interpret, so it stays exactly as written."""
    local, at, domain = address.strip().rpartition("@")
    return f"{local}@{domain.lower()}" if at else address.strip()


@dataclass(frozen=True, slots=True)
class Bounce:
    """A recipient refused for good because the mailbox does not exist or is disabled (a hard bounce).

    Written with the send's outcome; `suppress` puts the address on the suppression list (SUPPRESS_ON_HARD_BOUNCE),
    otherwise the bounce is only recorded there."""

    address: str
    smtp_reply: str
    suppress: bool = True
