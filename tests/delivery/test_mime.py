"""The fast path's oracle: for every mail it writes, its bytes are the stdlib's bytes, exactly.

The stdlib path in turn is what aiosmtplib's send_message flattened before the mailer wrote bytes itself.
"""

from __future__ import annotations

import random
import re
import uuid
from collections import Counter
from dataclasses import replace
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from aiosmtplib.email import flatten_message

from service.delivery import mime
from service.outbox import AttachmentInfo, Notification

BOUNDARY = "===============1234567890123456789=="
MAIL_FROM = "Notifier <notifier@example.com>"


def notification(**fields: object) -> Notification:
    values: dict[str, object] = {
        "id": "n1",
        "to": ["ada@example.com"],
        "subject": "Hello",
        "text": "Hi Ada",
        "message_id": "<0b7c3f6e-1d2a-4c5b-9e8f-7a6b5c4d3e2f@notifier.example.com>",
        "created_at": 1764075000.25,
    }
    values.update(fields)
    return Notification(**values)  # type: ignore[arg-type]


def stdlib_bytes(n: Notification, mail_from: str = MAIL_FROM, **flags: object) -> bytes | None:
    try:
        return mime.build_stdlib_bytes(n, mail_from, boundary=BOUNDARY, **flags)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return None


def assert_fast_path_matches(n: Notification, mail_from: str = MAIL_FROM) -> bytes | None:
    """Either the fast path declines, or its bytes are the stdlib's for every way the server may take them."""
    fast = mime.build_fast_bytes(n, mail_from, boundary=BOUNDARY)
    if fast is not None:
        for utf8 in (False, True):
            for cte_type in ("8bit", "7bit"):
                assert fast == stdlib_bytes(n, mail_from, utf8=utf8, cte_type=cte_type), (n, mail_from)
    return fast


LONG = "x" * 79
# (notification, whether the fast path must take it): declining is always allowed by the oracle, but a case marked
# True that starts falling back is a lost optimisation, so it fails here too.
CORPUS: dict[str, tuple[Notification, bool]] = {
    "plain": (notification(), True),
    "cc-and-reply-to": (notification(cc=["c@example.com", "d@example.org"], reply_to="r@example.com"), True),
    "display-names": (notification(to=["Ada Lovelace <ada@example.com>", "bob@example.com"]), True),
    "display-name-with-dot": (notification(to=["J. Smith <j@example.com>"]), False),
    "display-name-quoted": (notification(to=['"Lovelace, Ada" <ada@example.com>']), False),
    "display-name-with-quote": (notification(to=['Ada "The Countess" <ada@example.com>']), False),
    "comma-in-name": (notification(reply_to="Lovelace, Ada <ada@example.com>"), False),
    "apostrophe-name": (notification(to=["O'Brien <ob@example.com>"]), True),
    "plus-address": (notification(to=["ada+news@example.com"]), True),
    "non-ascii-name": (notification(to=["Zoë Ünïcode <z@example.com>"]), False),
    "non-ascii-subject": (notification(subject="Grüße"), False),
    "non-ascii-body": (notification(text="Héllo\n"), False),
    "non-ascii-html": (notification(text="Hi", html="<p>Hé</p>"), False),
    "long-subject": (notification(subject="long subject " * 12), False),
    "subject-at-the-fold": (notification(subject="s" * (78 - len("Subject: "))), True),
    "subject-past-the-fold": (notification(subject="s" * (79 - len("Subject: "))), False),
    "subject-double-space": (notification(subject="two  spaces"), False),
    "subject-edge-space": (notification(subject=" padded "), False),
    "subject-tab": (notification(subject="a\tb"), False),
    "subject-encoded-word": (notification(subject="=?utf-8?q?caf=C3=A9?="), False),
    "subject-question": (notification(subject="Ready?"), False),
    "subject-specials": (notification(subject="Re: [ticket #42] (urgent) <a@b> ; x, y = 1%"), True),
    "empty-subject": (notification(subject=""), False),
    "body-line-78": (notification(text="y" * 78 + "\nend"), True),
    "body-line-79": (notification(text=LONG + "\nend"), False),
    "body-line-999": (notification(text="z" * 999), False),
    "body-dots": (notification(text=".\n.. leading dots\n.\nend"), True),
    "body-from-lines": (notification(text="From here\nFrom: x\n>From there"), True),
    "body-crlf": (notification(text="a\r\nb\rc\n\nd\n"), True),
    "body-trailing-newlines": (notification(text="a\n\n\n"), True),
    "body-nul": (notification(text="a\x00b"), False),
    "body-form-feed": (notification(text="a\x0cb"), False),
    "body-tab": (notification(text="a\tb"), True),
    "empty-text": (notification(text=""), True),
    "html-only": (notification(text=None, html="<p>Hi <b>Ada</b></p>\n"), True),
    "text-and-html": (notification(text="Hi Ada\n", html="<p>Hi Ada</p>"), True),
    "text-and-empty-html": (notification(text="Hi", html=""), True),
    "no-body": (notification(text=None), False),
    "cr-in-subject": (notification(subject="x\rBcc: eve@example.com"), False),
    "lf-in-subject": (notification(subject="x\nBcc: eve@example.com"), False),
    "crlf-in-to": (notification(to=["ada@example.com\r\nBcc: eve@example.com"]), False),
    "lf-in-reply-to": (notification(reply_to="r@example.com\nBcc: eve@example.com"), False),
    "nul-in-subject": (notification(subject="a\x00b"), False),
    "nul-in-cc": (notification(cc=["c@exa\x00mple.com"]), False),
    "many-recipients": (notification(to=[f"person{i}@example.com" for i in range(8)]), False),
    "bcc": (notification(bcc=["secret@example.com"]), True),
    "odd-message-id": (notification(message_id="<a b@c>"), False),
    "comment-in-address": (notification(to=["ada@example.com (Ada)"]), False),
    "domain-literal": (notification(to=["ada@[127.0.0.1]"]), False),
    "group": (notification(to=["undisclosed-recipients:;"]), False),
    "headers": (
        notification(
            headers={
                "List-Unsubscribe": "<https://example.com/u/42>, <mailto:u@example.com>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                "X-Campaign": "spring-2026",
            }
        ),
        True,
    ),
    "headers-with-html": (notification(html="<p>Hi</p>", headers={"Precedence": "bulk"}), True),
    "header-query-string": (notification(headers={"List-Unsubscribe": "<https://example.com/u?id=42>"}), False),
    "header-long": (notification(headers={"References": " ".join(f"<{i}@example.com>" for i in range(9))}), False),
    "header-non-ascii": (notification(headers={"X-Team": "Équipe"}), False),
    "header-lf": (notification(headers={"X-Note": "a\nBcc: eve@example.com"}), False),
    "header-crlf-name": (notification(headers={"X-A\r\nBcc": "eve@example.com"}), False),
    "epoch": (notification(created_at=0.0), True),
    "year-9999": (notification(created_at=253402300799.0), True),
}


@pytest.mark.parametrize(("case", "fast_expected"), [(k, v[1]) for k, v in CORPUS.items()], ids=list(CORPUS))
def test_the_fast_path_writes_the_stdlibs_bytes_or_declines(case: str, fast_expected: bool) -> None:
    n = CORPUS[case][0]
    fast = assert_fast_path_matches(n)
    assert (fast is not None) == fast_expected
    for mail_from in ("notifier@example.com", "Zoë <z@example.com>", "Not, Quoted <n@example.com>"):
        assert_fast_path_matches(n, mail_from)


@pytest.mark.parametrize("case", list(CORPUS))
def test_the_stdlib_path_writes_what_send_message_sent(case: str) -> None:
    n = CORPUS[case][0]
    for utf8 in (False, True):
        for cte_type in ("8bit", "7bit"):
            try:
                message = mime.build_message(n, MAIL_FROM, boundary=BOUNDARY)
            except (ValueError, TypeError):
                with pytest.raises((ValueError, TypeError)):
                    mime.build_stdlib_bytes(n, MAIL_FROM, utf8=utf8, cte_type=cte_type)
                continue
            flattened = flatten_message(message, utf8=utf8, cte_type=cte_type)
            assert mime.build_stdlib_bytes(n, MAIL_FROM, utf8=utf8, cte_type=cte_type, boundary=BOUNDARY) == flattened


def test_the_benchmarks_mail_takes_the_fast_path() -> None:
    # The mail of benchmarks/smtp_alone.py and of `make bench`, with the service's own Message-ID shape.
    n = notification(
        to=["ada@example.com"],
        subject="Benchmark",
        text="Hello from the benchmark.",
        message_id=f"<{uuid.uuid4()}@example.com>",
    )
    assert mime.build_fast_bytes(n, "notifications@example.com") is not None
    assert mime.build_mail_bytes(n, "notifications@example.com") == mime.build_fast_bytes(
        n, "notifications@example.com"
    )


def test_multipart_boundaries_are_the_stdlibs_shape_and_never_in_the_content() -> None:
    boundary = mime.build_boundary(b"")
    assert re.fullmatch(r"={15}[0-9]{19}==", boundary)
    random.seed(7)
    taken = mime.build_boundary(b"")
    random.seed(7)
    assert mime.build_boundary(taken.encode()) != taken


@pytest.mark.parametrize("case", ["plain", "bcc", "text-and-html", "non-ascii-name"])
def test_bcc_is_never_in_the_bytes(case: str) -> None:
    n = replace(CORPUS[case][0], bcc=["secret@example.com"])
    data = mime.build_mail_bytes(n, MAIL_FROM)
    assert b"secret" not in data
    assert b"bcc" not in data.lower()


@pytest.mark.parametrize("field", ["subject", "to", "cc", "reply_to"])
@pytest.mark.parametrize("breaker", ["\r", "\n", "\r\n"])
def test_a_line_break_in_a_header_is_refused_by_both_paths(field: str, breaker: str) -> None:
    value = f"ada@example.com{breaker}Bcc: eve@example.com"
    n = notification(**{field: [value] if field in ("to", "cc") else value})
    assert mime.build_fast_bytes(n, MAIL_FROM) is None
    with pytest.raises(ValueError, match=r"linefeed|newline|CR|LF"):
        mime.build_mail_bytes(n, MAIL_FROM)


# --- randomized: seeded, so a failure replays; the message names the seed and the mail -----------------------------

SEED = 20261125
PIECES = [
    "ada", "Ada", "Lovelace", "x", "a.b", "O'Brien", "zoë", "Ünï", "=?utf-8?q?x?=", "?", "=", "+", "-", "_", "#",
    ".", ",", ";", ":", '"', "\\", "(", ")", "<", ">", "[", "]", "@", " ", "  ", "\t", "\r", "\n", "\x00", "\x7f",
    "é", "日本", "\u2028", "\x85", "\x0c",
]  # fmt: skip
WORD_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=^_`{|}~-"


def random_word(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(WORD_CHARS) for _ in range(length))


def random_text(rng: random.Random, length: int, odd: float) -> str:
    """Mostly plain words, with the odd awkward piece mixed in."""
    parts: list[str] = []
    while sum(map(len, parts)) < length:
        if rng.random() < odd:
            parts.append(rng.choice(PIECES))
        else:
            parts.append(random_word(rng, rng.randint(1, 12)))
            parts.append(" ")
    return "".join(parts)[:length].strip() if rng.random() < 0.7 else "".join(parts)[:length]


def random_address(rng: random.Random, odd: float) -> str:
    local = random_word(rng, rng.randint(1, 10))
    if rng.random() < 0.2:
        local += "." + random_word(rng, rng.randint(1, 5))
    domain = rng.choice(["example.com", "mail.example.org", "x-y.test", "EXAMPLE.NET"])
    spec = f"{local}@{domain}"
    if rng.random() < odd:
        spec = rng.choice([spec.replace("@", rng.choice(PIECES) + "@"), spec + rng.choice(PIECES)])
    roll = rng.random()
    if roll < 0.4:
        return spec
    name = random_text(rng, rng.randint(1, 30), odd)
    return f"{name} <{spec}>" if roll < 0.9 else f'"{name}" <{spec}>'


def random_body(rng: random.Random, odd: float) -> str:
    lengths = [0, 5, 40, 40, 40, 76, 77, 78, 78, 79, 200]
    lines = [random_text(rng, rng.choice(lengths), odd) for _ in range(rng.choice([0, 1, 1, 2, 3, 6]))]
    return rng.choice(["\n", "\r\n", "\r"]).join(lines) + rng.choice(["", "\n", "\n\n"])


def random_notification(rng: random.Random) -> Notification:
    odd = rng.choice([0.0, 0.0, 0.0, 0.0, 0.02, 0.1])
    text = random_body(rng, odd) if rng.random() < 0.85 else None
    html = random_body(rng, odd) if text is None or rng.random() < 0.3 else None
    return notification(
        to=[random_address(rng, odd) for _ in range(rng.choice([1, 1, 1, 2, 3]))],
        cc=[random_address(rng, odd) for _ in range(rng.choice([0, 0, 1, 2]))],
        bcc=[random_address(rng, odd) for _ in range(rng.choice([0, 0, 1]))],
        reply_to=random_address(rng, odd) if rng.random() < 0.3 else None,
        subject=random_text(rng, rng.choice([0, 1, 10, 10, 30, 60, 68, 69, 70, 71, 100]), odd),
        text=text,
        html=html,
        headers={
            rng.choice(["X-Campaign", "List-Id", "References", f"X-{random_word(rng, 8)}"]): random_text(
                rng, rng.choice([1, 10, 20, 40, 60, 100]), odd
            )
            for _ in range(rng.choice([0, 0, 0, 0, 0, 1, 2]))
        },
        message_id=rng.choice(
            [f"<{uuid.UUID(int=rng.getrandbits(128))}@example.com>", f"<{random_text(rng, 20, odd)}@x.test>"]
        ),
        created_at=rng.uniform(-1e9, 3e11) if rng.random() < 0.1 else rng.uniform(0, 2e9),
    )


def test_random_mail_is_either_declined_or_byte_identical() -> None:
    rng = random.Random(SEED)
    taken: Counter[str] = Counter()
    for i in range(4000):
        n = random_notification(rng)
        mail_from = random_address(rng, 0.05) if rng.random() < 0.2 else MAIL_FROM
        fast = mime.build_fast_bytes(n, mail_from, boundary=BOUNDARY)
        if fast is None:
            continue
        for utf8 in (False, True):
            assert fast == stdlib_bytes(n, mail_from, utf8=utf8), f"seed {SEED}, mail {i}: {n!r} from {mail_from!r}"
        taken["all"] += 1
        taken["multipart"] += n.text is not None and n.html is not None
        taken["display name"] += "<" in ", ".join(n.to)
        taken["line of 78"] += any(len(line) == 78 for line in (n.text or "").splitlines())
        taken["subject of 60+"] += len(n.subject) >= 60
        taken["headers"] += bool(n.headers)
    # A generator that never reaches the fast path, or never its edges, proves nothing.
    assert taken["all"] > 300, taken
    assert min(taken.values()) >= 30, taken


# -- attachments ----------------------------------------------------------------------------------------------

PDF = b"%PDF-1.7\n\x00\xff" * 100
PNG = b"\x89PNG\r\n\x1a\n" * 10


def with_attachments(**fields: object) -> Notification:
    values: dict[str, object] = {
        "html": '<img src="cid:logo">',
        "attachments": [
            AttachmentInfo("logo.png", "image/png", len(PNG), "logo"),
            AttachmentInfo("naïve résumé.pdf", "application/pdf", len(PDF)),
        ],
        "attachment_data": [PNG, PDF],
    }
    values.update(fields)
    return notification(**values)


def structure(part: EmailMessage) -> object:
    if part.is_multipart():
        return (part.get_content_type(), [structure(child) for child in part.iter_parts()])  # type: ignore[arg-type]
    return part.get_content_type()


def parsed(n: Notification, **flags: object) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(mime.build_mail_bytes(n, MAIL_FROM, **flags))  # type: ignore[arg-type]
    assert isinstance(message, EmailMessage)
    return message


def test_the_fast_path_declines_a_mail_with_attachments() -> None:
    plain = notification()
    assert mime.build_fast_bytes(plain, MAIL_FROM) is not None
    assert mime.build_fast_bytes(with_attachments(), MAIL_FROM) is None


@pytest.mark.parametrize("cte_type", ["8bit", "7bit"])
def test_inline_images_sit_in_a_related_part_inside_the_alternative(cte_type: str) -> None:
    message = parsed(with_attachments(), cte_type=cte_type)

    assert structure(message) == (
        "multipart/mixed",
        [
            ("multipart/alternative", ["text/plain", ("multipart/related", ["text/html", "image/png"])]),
            "application/pdf",
        ],
    )
    related = message.get_payload()[0].get_payload()[1]  # type: ignore[index,union-attr]
    image = related.get_payload()[1]
    assert (image["Content-ID"], image.get_content_disposition(), image.get_content()) == ("<logo>", "inline", PNG)
    [attachment] = message.iter_attachments()
    assert (attachment.get_filename(), attachment.get_content()) == ("naïve résumé.pdf", PDF)


def test_html_alone_with_an_inline_image_is_related_and_text_alone_is_mixed() -> None:
    html_only = parsed(
        with_attachments(
            text=None, attachments=[AttachmentInfo("logo.png", "image/png", len(PNG), "logo")], attachment_data=[PNG]
        )
    )
    text_only = parsed(with_attachments(html=None))

    assert structure(html_only) == ("multipart/related", ["text/html", "image/png"])
    # Without html nothing shows an inline image: it goes as an attachment, keeping its Content-ID.
    assert structure(text_only) == ("multipart/mixed", ["text/plain", "image/png", "application/pdf"])
    assert [a["Content-ID"] for a in text_only.iter_attachments()] == ["<logo>", None]


def test_a_non_ascii_filename_goes_out_per_rfc_2231() -> None:
    data = mime.build_mail_bytes(with_attachments(), MAIL_FROM)

    assert b"filename*=utf-8''na%C3%AFve%20r%C3%A9sum%C3%A9.pdf" in data
    assert b"=?utf-8?" not in data


def test_attachments_whose_bytes_are_missing_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="2 attachments, 0 found"):
        mime.build_mail_bytes(with_attachments(attachment_data=[]), MAIL_FROM)
