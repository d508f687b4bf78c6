"""Is an MLflow store there? Seconds-long checks before any work: MLflow's own client retries a
dead server or database for minutes."""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.parse
import urllib.request

from convvae.errors import TrackingError
from convvae.runtime.uris import without_secrets
from convvae.tracking.store import login


def check_store(uri: str, timeout_s: float) -> None:
    """A TrackingError within about ``timeout_s`` when nothing answers at an http(s) server or
    a database URI (SQLite and file stores need no check); limits MLflow's own http retries."""
    if uri.startswith(("http://", "https://")):
        limit_http_retries(timeout_s)
        check_server(uri, timeout_s)
    elif not uri.startswith(("sqlite:", "file:")) and "://" in uri:
        check_database(uri, timeout_s)


def limit_http_retries(timeout_s: float) -> None:
    """MLflow's http retries bounded by ``timeout_s``, unless the user set them."""
    # MLflow's defaults retry a dead server for about 4 minutes; a user's setting wins.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(timeout_s)))


def check_server(uri: str, timeout_s: float) -> None:
    """The server's /health answers within ``timeout_s``, or a TrackingError."""
    try:
        # urllib takes no user:password in a URL (MLflow does): it goes in a header.
        parts = urllib.parse.urlsplit(uri)
        netloc = parts.hostname or ""
        netloc = f"[{netloc}]" if ":" in netloc else netloc
        netloc += f":{parts.port}" if parts.port else ""
        health = urllib.parse.urlunsplit(parts._replace(netloc=netloc)).rstrip("/")
        request = urllib.request.Request(health + "/health")
        credentials = login(parts)
        if credentials is not None:
            basic = base64.b64encode(":".join(credentials).encode()).decode()
            request.add_header("Authorization", f"Basic {basic}")
        # With credentials, no redirect is followed: urllib would send them to any target.
        opener = urllib.request.build_opener(*([_NoRedirect()] if credentials else []))
        with opener.open(request, timeout=timeout_s):
            pass
    except urllib.error.HTTPError as err:
        target = err.headers.get("Location") if 300 <= err.code < 400 else None
        if target is None:
            raise _unreachable(uri, err.reason) from None
        raise TrackingError(
            f"MLflow tracking server {without_secrets(uri)} redirects to "
            f"{without_secrets(target)}; credentials are never sent on: set the tracking URI "
            "to the address the server redirects to"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise _unreachable(uri, getattr(err, "reason", err)) from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects answered as the HTTPError they are, never followed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _unreachable(uri: str, reason: object) -> TrackingError:
    return TrackingError(
        f"MLflow tracking server {without_secrets(uri)} is unreachable ({reason}); start it, "
        "fix tracking.uri / MLFLOW_TRACKING_URI, or unset them to use the local SQLite store"
    )


def check_database(uri: str, timeout_s: float) -> None:
    """Something listens at the database URI's host and port, or a TrackingError."""
    # MLflow retries a database it cannot reach for minutes; one connection attempt to its
    # host and port says in seconds whether anything listens there.
    import socket

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(uri)
    except (ArgumentError, ValueError):
        return  # not a URL this check reads (several hosts, say): left to MLflow
    backend = url.get_backend_name()
    port = url.port or {"postgresql": 5432, "mysql": 3306}.get(backend)
    through_socket = {"host", "unix_socket", "odbc_connect"} & set(url.query)
    if (
        url.host is None
        or port is None  # an unknown dialect, or an ODBC data source name (mssql)
        or through_socket
        or (backend == "mysql" and url.host == "localhost")  # mysqlclient: the socket
    ):
        return  # not a TCP connection this check can try: left to MLflow
    try:
        socket.create_connection((url.host, port), timeout=timeout_s).close()
    except OSError as err:
        raise TrackingError(
            f"MLflow tracking database {without_secrets(uri)} is unreachable ({err}); start it, "
            "fix tracking.uri / MLFLOW_TRACKING_URI, or unset them to use the local SQLite "
            "store"
        ) from None
