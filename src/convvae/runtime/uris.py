"""Secrets inside URIs: which a URI holds, and the URI with each shown as ``***``.

A tracking or database URI may carry a password (``user:password@``), a token in place of the
user (``https://TOKEN@host``) or a token in its query (``?token=``, ``?X-Amz-Signature=``).
params.yaml must hold none of them (DVC records it in dvc.lock and every run uploads it), and
nothing the project prints or logs shows them.
"""

from __future__ import annotations

import re
import urllib.parse

# Query keys whose values are credentials (AWS presigned URLs, OAuth, API keys).
SECRET_QUERY_KEY = re.compile(r"token|secret|passw|pwd|key|sig|credential|auth", re.IGNORECASE)
HIDDEN = "***"


def uri_secrets(uri: str) -> list[str]:
    """What secrets ``uri`` holds, in words ([] for none)."""
    parts = urllib.parse.urlsplit(uri)
    found = []
    if parts.password is not None:
        found.append("a password")
    elif parts.username is not None:
        found.append("a user name or token before @")
    found += [
        f"query parameter {key!r}"
        for key, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if SECRET_QUERY_KEY.search(key)
    ]
    return found


def without_secrets(uri: str) -> str:
    """``uri`` with its password, a token before @ and secret query values shown as ``***``
    (a user name with a password stays: it says whose password it is)."""
    parts = urllib.parse.urlsplit(uri)
    if not uri_secrets(uri):  # urlunsplit would drop sqlite:////path's empty host
        return uri
    if parts.username is not None:
        user, _, host = parts.netloc.rpartition("@")
        shown = f"{user.split(':')[0]}:{HIDDEN}" if parts.password is not None else HIDDEN
        parts = parts._replace(netloc=f"{shown}@{host}")
    if parts.query:
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        hidden = [(k, HIDDEN if SECRET_QUERY_KEY.search(k) else v) for k, v in query]
        parts = parts._replace(query=urllib.parse.urlencode(hidden, safe="*"))
    return urllib.parse.urlunsplit(parts)
