"""How a notification is stored as a row, the same for every backend: its mail content as one JSON document,
its delivery state in columns. A row reads the same from SQLite and from PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

from service.outbox import Notification


def content_json(n: Notification) -> str:
    return json.dumps(
        {
            "to": n.to,
            "cc": n.cc,
            "bcc": n.bcc,
            "reply_to": n.reply_to,
            "subject": n.subject,
            "text": n.text,
            "html": n.html,
            "metadata": n.metadata,
            "envelope": n.envelope,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def notification_from_row(row: Any) -> Notification:
    """From a row with the notifications table's columns (a sqlite3.Row or an asyncpg.Record)."""
    content = json.loads(row["content"])
    return Notification(
        seq=row["seq"],
        id=row["id"],
        status=row["status"],
        to=content["to"],
        cc=content["cc"],
        bcc=content["bcc"],
        reply_to=content["reply_to"],
        subject=content["subject"],
        text=content["text"],
        html=content["html"],
        metadata=content["metadata"],
        envelope=content.get("envelope"),
        message_id=row["message_id"],
        request_id=row["request_id"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        smtp_reply=row["smtp_reply"],
        refused_recipients=json.loads(row["refused"]) if row["refused"] else [],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        sent_at=row["sent_at"],
        next_attempt_at=row["next_attempt_at"],
    )
