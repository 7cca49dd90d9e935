"""Reading the page like a browser would, for the in-process tests: its forms' CSRF token, its text."""

from __future__ import annotations

import html
import re

import httpx

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_TAGS = re.compile(r"<[^>]+>")


def csrf_of(page: httpx.Response) -> str:
    found = _CSRF.search(page.text)
    assert found, f"no CSRF field on {page.url}"
    return found.group(1)


def text_of(page: httpx.Response) -> str:
    """The page's visible text, tags dropped and entities decoded, whitespace squeezed."""
    return " ".join(html.unescape(_TAGS.sub(" ", page.text)).split())


async def csrf(client: httpx.AsyncClient, path: str = "/ui/send") -> str:
    return csrf_of(await client.get(path))
