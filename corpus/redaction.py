"""Secrets never reach the store or the terminal: the one redaction of text that leaves.

:func:`redact` is applied where text is written to the store or printed — the call ledger's
``calls.error`` / ``attempts.error`` (``generation.ledger``), ``runs.error`` and
``runs.config`` (:class:`corpus.store.Store`), and the CLI's error line and tracebacks
(``selfevo.cli``) — so no code path can bypass it by forgetting to call it. Model responses
are model output and are stored as they are.

It removes:

* every secret registered at run time with :func:`register_secret` (the API key a backend
  read from the environment, the password of a base URL), in any form it is sent in
  (as is, percent-encoded, and as the base64 of ``user:password`` of a Basic header);
* the credentials of any URL (``https://user:password@host`` → ``https://[redacted]@host``),
  registered or not (a malformed spec never got registered);
* the value of ``Authorization`` / ``Proxy-Authorization`` / ``api-key`` headers and any
  ``Bearer`` token, as a server echoing a request would show them;
* OpenAI-shaped keys (``sk-`` and 16 or more characters), as providers print them.

It is conservative on purpose: it is applied to configs and error messages, whose other words
(snapshot names, paths, SQL) must survive.
"""

from __future__ import annotations

import base64
import re
import threading
from urllib.parse import quote

REDACTED = "[redacted]"
_lock = threading.Lock()
_secrets: set[str] = set()

_URL_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s?#@]*(?:@[^/\s?#@]*)*@")
_HEADER = re.compile(
    r"((?:proxy-)?authorization|x-api-key|api-key)(\"?'?\s*[:=]\s*\"?'?)"
    r"(?:(?:bearer|basic|token)\s+)?[^\s\"',;}]+", re.IGNORECASE)
_BEARER = re.compile(r"\bBearer\s+[A-Za-z0-9\-._~+/=]{8,}")
# OpenAI-style keys (sk-…, sk-proj-…): long enough never to be a word of a message.
_KEYLIKE = re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}")


def register_secret(value: str | None, *, user: str | None = None) -> None:
    """Remember ``value`` (e.g. an API key) so :func:`redact` removes it from all text.

    With ``user``, ``value`` is a password sent as HTTP Basic auth: the base64 of
    ``user:value`` is registered too. Values shorter than 4 characters are not secrets
    worth the false positives.
    """
    if not value or len(value) < 4:
        return
    forms = {value, quote(value, safe="")}
    if user is not None:
        forms.add(base64.b64encode(f"{user}:{value}".encode()).decode())
    with _lock:
        _secrets.update(forms)


def redact(text: str) -> str:
    """``text`` without any secret (see the module docstring)."""
    if not text:
        return text
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for s in known:
        text = text.replace(s, REDACTED)
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = _HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _BEARER.sub(f"Bearer {REDACTED}", text)
    return _KEYLIKE.sub(REDACTED, text)


def redact_optional(text: str | None) -> str | None:
    """:func:`redact` for a nullable column value."""
    return None if text is None else redact(text)
