"""The compose stack's webhook receiver (`docker compose --profile webhooks up`): logs every event it gets and
whether its signature verifies with WEBHOOK_SECRET, using the standardwebhooks library as any receiver would.

Answers 204 to a verified event, 401 to one that does not verify (the notifier then retries it, and gives up
after WEBHOOK_MAX_ATTEMPTS). Standard library otherwise: an example to read, not a production server.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

PORT = 8080


def log(**fields: object) -> None:
    print(json.dumps(fields, ensure_ascii=False), flush=True)


class Handler(BaseHTTPRequestHandler):
    webhook: Webhook

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {key.lower(): value for key, value in self.headers.items()}
        try:
            event = self.webhook.verify(body, headers)
        except WebhookVerificationError as exc:
            log(event="webhook_refused", webhook_id=headers.get("webhook-id"), error=str(exc))
            self._answer(401)
            return
        data = event.get("data", {})
        log(
            event="webhook_received",
            webhook_id=headers["webhook-id"],
            type=event.get("type"),
            id=data.get("id"),
            status=data.get("status"),
            verified=True,
        )
        self._answer(204)

    def do_GET(self) -> None:
        self._answer(200)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    secret = os.environ.get("WEBHOOK_SECRET", "")
    if not secret:
        sys.exit("webhook-receiver: WEBHOOK_SECRET is not set: put it in config/secrets.env (docs/events.md)")
    Handler.webhook = Webhook(secret)
    log(event="webhook_receiver_listening", port=PORT)
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()  # noqa: S104 - inside its container


if __name__ == "__main__":
    main()
