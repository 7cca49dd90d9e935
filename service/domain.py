"""The words every layer shares: a notification's Status, a recipient's Refusal, the SendOutcome the delivery
layer hands the dispatcher, and the HistoryEntry each outcome leaves. Depends on nothing of the service's own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """Where a notification is: waiting for its `send_at` (`scheduled`), waiting (`queued`), being tried
    (`sending`), or done (`sent`, `failed`, `canceled`)."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SCHEDULED = "scheduled"
    CANCELED = "canceled"


# What counts against the queue limit: every notification not sent or failed yet. `scheduled` is not in it:
# mail for later takes no room in the queue until the dispatcher takes it at its time (docs/api.md).
UNSENT = (Status.QUEUED, Status.SENDING)

# What POST /v1/notifications/{id}/cancel can stop: nothing has been tried for it yet, or it waits for a retry.
CANCELABLE = (Status.SCHEDULED, Status.QUEUED)
# A tag: what a notification is filed and counted under (`?tag=`, METRIC_TAGS). Short and plain, so it needs no
# escaping in a URL, a Prometheus label or a CSV form field (where several are separated by commas).
TAG_PATTERN = r"^[a-z0-9_.-]{1,64}$"
MAX_TAGS = 10


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


class Outcome(StrEnum):
    """What one entry of a notification's history says (docs/api.md lists them)."""

    SENT = "sent"  # the server took the mail (for every recipient it did not refuse)
    RETRY = "retry"  # this attempt failed for now, or some recipients were refused for now: tried again later
    FAILED = "failed"  # the last word: a permanent failure, or the attempts ran out
    INTERRUPTED = "interrupted"  # shutdown ran out of grace mid-send: tried again, may be sent twice
    RECOVERED = "recovered"  # left `sending` by a process that stopped: queued again, may be sent twice
    REQUEUED = "requeued"  # an operator put a `failed` notification back in the queue (not an attempt)
    CANCELED = "canceled"  # canceled (POST …/cancel) while scheduled or queued: never sent (not an attempt)


# The history keeps this many entries, the newest; `attempts` still counts them all.
HISTORY_LIMIT = 50


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One entry of a notification's history: when, what came of it, and the server's code and words."""

    at: float
    outcome: Outcome
    smtp_code: int | None
    message: str | None

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "outcome": str(self.outcome), "smtp_code": self.smtp_code, "message": self.message}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> HistoryEntry:
        return cls(
            at=float(value["at"]),
            outcome=Outcome(value["outcome"]),
            smtp_code=value["smtp_code"],
            message=value["message"],
        )


def reply_code(reply: str | None) -> int | None:
    """The code an SMTP reply starts with (`250 OK` → 250), or None."""
    head = (reply or "")[:3]
    return int(head) if head.isdigit() else None


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
