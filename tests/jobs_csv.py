"""Mail-merge CSVs for tests: numbered people, with bad rows at known places."""

from __future__ import annotations


def is_bad_address(i: int) -> bool:
    return i % 50 == 7


def is_missing_name(i: int) -> bool:
    return i % 70 == 3 and not is_bad_address(i)


def people_csv(rows: int) -> bytes:
    """`rows` people for the welcome template; some with a bad address, some without a first name."""
    lines = ["email,first_name,login_url"]
    for i in range(rows):
        email = f"person{i}@@example.com" if is_bad_address(i) else f"person{i}@example.com"
        name = "" if is_missing_name(i) else f"Person {i}"
        lines.append(f"{email},{name},https://example.com/login/{i}")
    return ("\r\n".join(lines) + "\r\n").encode()


def good_addresses(rows: int) -> set[str]:
    return {f"person{i}@example.com" for i in range(rows) if not is_bad_address(i) and not is_missing_name(i)}
