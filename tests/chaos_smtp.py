"""A chaos SMTP server for soak tests, in the spirit of MailHog's "Jim": it drops connections, rejects with
4xx and 5xx, and stalls, at random.

Each decision is drawn from an RNG seeded with (seed, stage, recipient, how many times it was tried), not
from one shared stream: the workers' interleaving changes from run to run, but the k-th attempt to one
recipient always meets the same fate, so a failing seed fails again (give each notification its own
recipient to make use of that).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass

from tests.smtp_sink import Received, RecordingHandler


@dataclass(frozen=True)
class Odds:
    """Chances per SMTP command; what is left is a plain success."""

    drop: float = 0.08
    transient: float = 0.10
    permanent: float = 0.02
    stall: float = 0.02


class ChaosHandler(RecordingHandler):
    def __init__(self, seed: int, *, rcpt: Odds = Odds(), data: Odds = Odds(), stall_seconds: float = 5.0) -> None:
        super().__init__()
        self.seed = seed
        self.rcpt_odds = rcpt
        self.data_odds = data
        self.stall_seconds = stall_seconds
        self.tries: Counter[str] = Counter()
        # What the chaos did, per kind and stage ("drop@DATA": 7): proof that the soak met every fault.
        self.faults: Counter[str] = Counter()
        # The permanent rejections handed out, by recipient: those notifications must end `failed`.
        self.rejected: dict[str, str] = {}

    def _fate(self, key: str, odds: Odds) -> str:
        self.tries[key] += 1
        roll = random.Random(f"{self.seed}:{key}:{self.tries[key]}").random()
        for fate, chance in (
            ("drop", odds.drop),
            ("transient", odds.transient),
            ("permanent", odds.permanent),
            ("stall", odds.stall),
        ):
            if roll < chance:
                return fate
            roll -= chance
        return "ok"

    async def _act(self, server, stage: str, recipient: str, odds: Odds) -> str | None:  # type: ignore[no-untyped-def]
        fate = self._fate(f"{stage}:{recipient}", odds)
        if fate == "ok":
            return None
        self.faults[f"{fate}@{stage}"] += 1
        if fate == "drop":
            server.transport.close()
            return "421 4.4.2 chaos: connection dropped"
        if fate == "transient":
            return "451 4.3.0 chaos: try again later"
        if fate == "permanent":
            reply = "554 5.7.1 chaos: rejected for good"
            self.rejected[recipient] = reply
            return reply
        # A stall: by the time this answers, the client's send deadline has freed its worker.
        await asyncio.sleep(self.stall_seconds)
        return "451 4.4.2 chaos: took too long"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        reply = await self._act(server, "RCPT", address, self.rcpt_odds)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        reply = await self._act(server, "DATA", ",".join(envelope.rcpt_tos), self.data_odds)
        if reply is not None:
            return reply
        with self._lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"
