"""An MLflow store: where it is (its URI), how its credentials reach MLflow, and its failures
as one line that names the store without its secrets."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from convvae.config import TrackingConfig
from convvae.errors import TrackingError
from convvae.runtime.uris import hide_secrets, without_secrets

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


def resolve_tracking_uri(cfg: TrackingConfig, root: Path) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else the embedded SQLite store under ``root``.

    A relative SQLite path (``sqlite:///mlflow.db``) is taken relative to ``root``, as the
    default store is: under ``dvc exp run --temp`` the working folder is a copy that is deleted.
    """
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / DEFAULT_DB}"
    path = uri.removeprefix("sqlite:///")
    if uri.startswith("sqlite:///") and path and not path.startswith(("/", ":memory:", "file:")):
        return f"sqlite:///{root / path}"
    return uri


def login(parts: urllib.parse.SplitResult) -> tuple[str, str] | None:
    """A URL's ``user:password@`` part, unquoted, as (user, password); None without one."""
    if parts.username is None:
        return None
    return urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")


def client_uri(uri: str) -> str:
    """The URI MLflow gets: an http(s) URI's user:password moves to MLflow's credential
    variables, or MLflow prints it in every "View run ... at:" line."""
    parts = urllib.parse.urlsplit(uri)
    credentials = login(parts)
    if not uri.startswith(("http://", "https://")) or credentials is None:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = credentials
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


@contextmanager
def store_errors(uri: str, action: str) -> Iterator[None]:
    """MLflow, database and file errors inside as one TrackingError: what failed, in which
    store (secrets hidden), and that finished work is kept."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (MlflowException, OSError, SQLAlchemyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err)
        first_line = hide_secrets(str(first_line), uri)
        raise TrackingError(
            f"could not {action} in MLflow store {without_secrets(uri)}: {first_line}; check that "
            "the store is reachable and writable, then re-run the stage (finished work is "
            "kept)"
        ) from None
