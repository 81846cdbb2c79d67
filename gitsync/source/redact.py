"""Redaction of credentials from anything the source prints: URLs, git's stderr, argv.

Owns the two rules: userinfo in a URL becomes ``***``, and every known secret value becomes
``***``. Must not log or raise; callers decide where the redacted text goes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "***"

# scheme://userinfo@host — userinfo is everything up to the last '@' before the path.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
# git prints basic-auth headers only with GIT_TRACE_CURL, but be safe.
_AUTH_HEADER = re.compile(r"(?i)(authorization:\s*)(\S+\s+)?\S+")


def redact_url(url: str) -> str:
    """``https://user:token@host/repo`` → ``https://***@host/repo``; others unchanged."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", url)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Removes URL userinfo, Authorization header values and each of ``secrets``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _AUTH_HEADER.sub(lambda m: f"{m[1]}{REDACTED}", text)
    return _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
