"""Secrets inside URIs: which a URI holds, and the URI with each shown as ``***``.

A tracking or database URI may carry a password (``user:password@``), a token in place of the
user (``https://TOKEN@host``) or a token in its query (``?token=``, ``?X-Amz-Signature=``).
params.yaml must hold none of them (DVC records it in dvc.lock and every run uploads it), and
nothing the project prints or logs shows them.
"""

from __future__ import annotations

import re
import urllib.parse

# Query keys whose values are credentials (AWS presigned URLs, OAuth, API keys), matched as
# whole words of the key: "keyword" or Postgres' "sslkey" (a file path) are not secrets.
SECRET_QUERY_KEY = re.compile(
    r"(^|[_\-.])(x-amz-)?(token|secret|password|passwd|pwd|sig|signature|credential|"
    r"api[_-]?key|access[_-]?key|auth)($|[_\-.])",
    re.IGNORECASE,
)
HIDDEN = "***"
# URLs whose user part is a person or a token (anything else is a database or store URI).
WEB = ("http", "https")


def uri_secrets(uri: str) -> list[str]:
    """What secrets ``uri`` holds, in words ([] for none)."""
    scheme, user, password, query = _parts(uri)
    found = []
    if password is not None:
        found.append("a password")
    elif user is not None and scheme in WEB:  # a database user name alone is no secret
        found.append("a user name or token before @")
    found += [
        f"query parameter {key!r}"
        for key, _ in urllib.parse.parse_qsl(query, keep_blank_values=True)
        if SECRET_QUERY_KEY.search(key)
    ]
    return found


def secret_values(uri: str) -> list[str]:
    """The secrets themselves, as written in ``uri`` (to hide them where a message quotes
    them): the password, a web URL's token before @, secret query values."""
    scheme, user, password, query = _parts(uri)
    values = [password] if password is not None else [user] if scheme in WEB else []
    values += [
        value for key, value in urllib.parse.parse_qsl(query) if SECRET_QUERY_KEY.search(key)
    ]
    return [value for value in values if value]


def hide_secrets(message: str, uri: str) -> str:
    """``message`` with ``uri``'s secrets shown as ``***``: MLflow's and the drivers' messages
    quote the URL they called, whole or in parts (each secret as written and decoded)."""
    message = message.replace(uri, without_secrets(uri))
    for secret in secret_values(uri):
        for form in {secret, urllib.parse.unquote(secret)}:
            message = message.replace(form, HIDDEN)
    return message


def without_secrets(uri: str) -> str:
    """``uri`` with its password, a token before @ and secret query values shown as ``***``
    (a user name with a password stays: it says whose password it is)."""
    if not uri_secrets(uri):  # unchanged: urlunsplit would drop sqlite:////path's empty host
        return uri
    scheme, user, password, query = _parts(uri)
    head, _, rest = uri.partition("://")
    if user is not None:
        # The user part ends at the last @ before the path (a password may hold / ? #).
        credentials, _, rest = rest.rpartition("@") if "@" in rest else ("", "", rest)
        shown = f"{user}:{HIDDEN}" if password is not None else HIDDEN
        rest = f"{shown}@{rest}" if credentials else rest
    if query:
        base, _, old_query = rest.rpartition("?")
        pairs = urllib.parse.parse_qsl(old_query, keep_blank_values=True)
        hidden = [(k, HIDDEN if SECRET_QUERY_KEY.search(k) else v) for k, v in pairs]
        rest = f"{base}?{urllib.parse.urlencode(hidden, safe='*')}"
    return f"{head}://{rest}"


def _parts(uri: str) -> tuple[str, str | None, str | None, str]:
    """(scheme, user, password, query). Database URIs are read as SQLAlchemy reads them: its
    password runs to the last @, / ? and # included (urlsplit would see a path there)."""
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in WEB or "://" not in uri:
        return scheme, parts.username, parts.password, parts.query
    authority = uri.partition("://")[2]
    credentials, at, rest = authority.rpartition("@")
    if not at or "?" in credentials.split(":", 1)[0] or "/" in credentials.split(":", 1)[0]:
        return scheme, None, None, parts.query
    user, colon, password = credentials.partition(":")
    return scheme, user, password if colon else None, rest.partition("?")[2]
