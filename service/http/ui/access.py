"""Who may use the web page: with API_KEYS set, a signed, expiring session cookie got by logging in with a key;
and the CSRF token every form that changes something must carry."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request, Response, status

from service.config import Settings
from service.http.auth import api_key_id

SESSION_COOKIE = "ui_session"
CSRF_COOKIE = "ui_csrf"
COOKIE_PATH = "/ui"
# A working day: long enough to keep the page open in a tab, short enough that a lost cookie soon stops working.
SESSION_SECONDS = 12 * 3600
CSRF_FIELD = "csrf"


class LoginRequired(Exception):
    """API_KEYS is set and the request has no valid session: the page answers with the login page."""


def _derived(secret: str, purpose: bytes) -> bytes:
    return hmac.new(secret.encode(), purpose, hashlib.sha256).digest()


def _sign(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def issue_session(key: str, now: float) -> str:
    """A session cookie's value for a logged-in `key`: its expiry, the key's fingerprint and an HMAC of both under
    a secret derived from the key, never the key; removing the key from API_KEYS ends its sessions. On `hmac`
    (a dozen lines) rather than a signing library the service does not otherwise need."""
    payload = f"{int(now) + SESSION_SECONDS}.{api_key_id(key)}"
    return f"{payload}.{_sign(_derived(key, b'ui-session'), payload)}"


def session_key(value: str | None, keys: list[str], now: float) -> str | None:
    """The configured key a session cookie was issued for, while it is unexpired and its signature holds."""
    if not value:
        return None
    expires, _, rest = value.partition(".")
    key_id, _, signature = rest.partition(".")
    if not expires.isdigit() or int(expires) <= now:
        return None
    for key in keys:
        if api_key_id(key) == key_id and hmac.compare_digest(
            signature, _sign(_derived(key, b"ui-session"), f"{expires}.{key_id}")
        ):
            return key
    return None


@dataclass(slots=True)
class Access:
    """One request's standing: open (no API_KEYS), logged in with a key, or neither; and its CSRF token."""

    open: bool
    key_id: str | None
    secure: bool
    # The token is an HMAC of `csrf_binding` (the session cookie, or before a login the random CSRF cookie)
    # under `csrf_secret`; another site can neither read the cookie nor compute the HMAC.
    csrf_secret: bytes
    csrf_binding: str
    # A CSRF cookie made for this response (the browser had none): set it; no form can carry its token yet.
    new_csrf_cookie: str | None = None

    @property
    def csrf_token(self) -> str:
        return _sign(self.csrf_secret, self.csrf_binding)

    def check_csrf(self, request: Request, token: str | None) -> None:
        """Refuse (403) a state-changing form without this session's token, or sent from another site."""
        # Fetch metadata, where the browser sends it, is a second lock: another site's form says cross-site.
        cross_site = request.headers.get("sec-fetch-site") == "cross-site"
        unbound = self.csrf_binding == self.new_csrf_cookie
        if cross_site or unbound or not hmac.compare_digest(token or "", self.csrf_token):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "this form's security token is missing or out of date: reload the page and send it again",
            )

    def set_cookies(self, response: Response) -> None:
        if self.new_csrf_cookie is not None:
            set_cookie(response, CSRF_COOKIE, self.new_csrf_cookie, secure=self.secure, max_age=None)


def set_cookie(response: Response, name: str, value: str, *, secure: bool, max_age: int | None) -> None:
    # Strict: the browser sends it on no request another site starts, links included.
    response.set_cookie(name, value, max_age=max_age, path=COOKIE_PATH, httponly=True, samesite="strict", secure=secure)


def read_access(request: Request, now: float | None = None) -> Access:
    """The request's standing, from its cookies; never raises."""
    settings: Settings = request.app.state.settings
    keys = settings.api_keys()
    secure = request.url.scheme == "https"
    csrf_cookie = request.cookies.get(CSRF_COOKIE) or ""
    new_csrf_cookie = None
    if len(csrf_cookie) < 32:
        csrf_cookie = new_csrf_cookie = secrets.token_urlsafe(32)
    if not keys:
        # As open as the API: the token only has to prove the form came from this page.
        return Access(True, None, secure, b"open", csrf_cookie, new_csrf_cookie)
    session = request.cookies.get(SESSION_COOKIE)
    key = session_key(session, keys, time.time() if now is None else now)
    if key is None or session is None:
        return Access(False, None, secure, _derived(",".join(keys), b"ui-login-csrf"), csrf_cookie, new_csrf_cookie)
    return Access(False, api_key_id(key), secure, _derived(key, b"ui-csrf"), session, new_csrf_cookie)


async def require_access(request: Request) -> Access:
    """The page's routes' dependency: their standing, or LoginRequired when API_KEYS asks for a key."""
    access = read_access(request)
    request.state.ui_access = access
    if not access.open and access.key_id is None:
        raise LoginRequired
    return access
