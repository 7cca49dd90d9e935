"""How a notification is stored as a row, the same for every backend: its mail content as one JSON document,
its delivery state in columns. A row reads the same from SQLite and from PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from service.domain import HistoryEntry, Outcome, Refusal, Status
from service.outbox.notifications import AttachmentInfo, Notification


def content_json(n: Notification) -> str:
    content: dict[str, Any] = {
        "to": n.to,
        "cc": n.cc,
        "bcc": n.bcc,
        "reply_to": n.reply_to,
        "subject": n.subject,
        "text": n.text,
        "html": n.html,
        "metadata": n.metadata,
        "envelope": n.envelope,
    }
    # Only when given: most mail has neither, and every row stays as short as before.
    if n.headers:
        content["headers"] = n.headers
    if n.tags:
        content["tags"] = n.tags
    if n.attachments:
        # Metadata only: the bytes are in the attachments table (attachment_rows).
        content["attachments"] = [a.to_json() for a in n.attachments]
    return json.dumps(content, ensure_ascii=False, separators=(",", ":"))


def refused_json(refused: Sequence[Refusal]) -> str:
    """The `refused` column: a JSON list of `{address, code, message}` (the API shows it as it is stored)."""
    return json.dumps([r.to_json() for r in refused])


def refused_from_json(value: str | None) -> list[Refusal]:
    return [Refusal.from_json(r) for r in json.loads(value)] if value else []


def history_entry_json(outcome: Outcome, at: float, smtp_code: int | None, message: str | None) -> str:
    """One entry for the `history` column, which the outcome's own UPDATE appends (keeping HISTORY_LIMIT)."""
    return json.dumps(HistoryEntry(at=at, outcome=outcome, smtp_code=smtp_code, message=message).to_json())


def history_from_json(value: Any) -> list[HistoryEntry]:
    """From the column: text in SQLite, already a string of jsonb from asyncpg; NULL for rows from before 0005."""
    return [HistoryEntry.from_json(entry) for entry in json.loads(value)] if value else []


def due_at(n: Notification) -> float:
    """When a new notification is first due: at its send_at when scheduled, else at once."""
    return n.send_at if n.status == Status.SCHEDULED and n.send_at is not None else n.created_at


def unsent_among(notifications: Sequence[Notification]) -> int:
    """How many new notifications count against the queue limit: all but the scheduled ones."""
    return sum(1 for n in notifications if n.status != Status.SCHEDULED)


def notification_from_row(row: Any) -> Notification:
    """From a row with the notifications table's columns (a sqlite3.Row or an asyncpg.Record)."""
    content = json.loads(row["content"])
    return Notification(
        seq=row["seq"],
        id=row["id"],
        status=Status(row["status"]),
        to=content["to"],
        cc=content["cc"],
        sender=row["sender"],
        bcc=content["bcc"],
        reply_to=content["reply_to"],
        subject=content["subject"],
        text=content["text"],
        html=content["html"],
        metadata=content["metadata"],
        envelope=content.get("envelope"),
        headers=content.get("headers") or {},
        tags=content.get("tags") or [],
        message_id=row["message_id"],
        request_id=row["request_id"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        smtp_reply=row["smtp_reply"],
        refused_recipients=refused_from_json(row["refused"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        sent_at=row["sent_at"],
        next_attempt_at=row["next_attempt_at"],
        history=history_from_json(row["history"]),
        send_at=row["send_at"],
        attachments=[AttachmentInfo.from_json(a) for a in content.get("attachments", ())],
    )


def attachment_rows(notifications: Sequence[Notification]) -> list[tuple[str, int, bytes]]:
    """The attachments table's rows of new notifications: (notification_id, position, data)."""
    return [(n.id, position, data) for n in notifications for position, data in enumerate(n.attachment_data)]
