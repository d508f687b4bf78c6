"""Every MLflow call of the project: runs, metrics, provenance, models and the registry.

The embedded default store is ``sqlite:///<repository root>/mlflow.db`` with artifacts in
``<repository root>/mlartifacts``, so a fresh clone needs no server; ``tracking.uri`` or
``$MLFLOW_TRACKING_URI`` points the same code at a team server.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.metadata
import io
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convvae.config import TrackingConfig
from convvae.errors import TrackingError
from convvae.model.vae import ConvVAE, Reconstructor
from convvae.tracking.provenance import repository_root

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
# What MLflow's registry prints to stderr itself when a model version is created; the stages
# print their own line ("registered <name> version <n>").
_REGISTRY_CHATTER = ("Registered model ", "Created version ", "Successfully registered model ")


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


def without_password(uri: str) -> str:
    """``uri`` with the password of its ``user:password@`` part replaced by ``***``."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    user, _, host = parts.netloc.rpartition("@")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user.split(':')[0]}:***@{host}"))


def _login(parts: urllib.parse.SplitResult) -> tuple[str, str] | None:
    """A URL's ``user:password@`` part, unquoted, as (user, password); None without one."""
    if parts.username is None:
        return None
    return urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} → {"train.lr": 0.1}; lists become strings."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value if not isinstance(value, list | tuple) else str(list(value))
    return flat


@dataclass(frozen=True)
class DatasetPart:
    """One split to record as a run input: images (N, C, H, W) uint8 and labels (N,)."""

    context: str  # training | validation | test
    images: np.ndarray
    labels: np.ndarray


class _WithoutChatter(io.TextIOBase):
    """A text stream that passes every line on to ``stream`` as soon as it is complete, except
    the registry's own prints (_REGISTRY_CHATTER)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.partial = ""

    def write(self, text: str) -> int:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            if not line.startswith(_REGISTRY_CHATTER):
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def close_line(self) -> None:
        """Pass on an unfinished last line."""
        if self.partial and not self.partial.startswith(_REGISTRY_CHATTER):
            self.stream.write(self.partial)
        self.partial = ""


@contextmanager
def _quiet_model_logging() -> Iterator[None]:
    """Logging and registering a model without MLflow's routine messages: the pyfunc's INFO
    "Validating input example against model signature" and the registry's own prints. Every
    other line written to stderr meanwhile goes through as it is written."""
    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_logger.level
    pyfunc_logger.setLevel(logging.WARNING)
    filtered = _WithoutChatter(sys.stderr)
    try:
        with contextlib.redirect_stderr(filtered):
            yield
    finally:
        filtered.close_line()
        pyfunc_logger.setLevel(level)


class Tracker:
    """An open connection to one MLflow store and experiment."""

    def __init__(self, cfg: TrackingConfig, root: Path | None = None) -> None:
        import mlflow

        self.root = repository_root(root)
        self.uri = resolve_tracking_uri(cfg, self.root)
        # What messages, logs and output files show: the URI without its password.
        self.shown_uri = without_password(self.uri)
        self.cfg = cfg
        self._mlflow = mlflow
        # "Creating initial MLflow database tables..." on a new store is not news to a user.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        if self.uri.startswith(("http://", "https://")):
            self._limit_http_retries(cfg.timeout_s)
            self._check_reachable(cfg.timeout_s)
        elif not self.uri.startswith(("sqlite:", "file:")) and "://" in self.uri:
            self._check_database_reachable(cfg.timeout_s)
        mlflow.set_tracking_uri(self._client_uri())
        with self._errors("open the experiment"):
            experiment = mlflow.get_experiment_by_name(cfg.experiment)
            if experiment is None:
                artifacts = None
                if self.uri.startswith("sqlite:"):
                    artifacts = (self.root / DEFAULT_ARTIFACTS).as_uri()
                mlflow.create_experiment(cfg.experiment, artifact_location=artifacts)
            mlflow.set_experiment(cfg.experiment)
        self.client = mlflow.MlflowClient()

    @staticmethod
    def _limit_http_retries(timeout_s: float) -> None:
        # MLflow's defaults retry a dead server for about 4 minutes; a user's setting wins.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(timeout_s)))

    def _client_uri(self) -> str:
        """The URI MLflow gets: an http(s) URI's user:password moves to MLflow's credential
        variables, or MLflow prints it in every "View run ... at:" line."""
        parts = urllib.parse.urlsplit(self.uri)
        login = _login(parts)
        if not self.uri.startswith(("http://", "https://")) or login is None:
            return self.uri
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = login
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    def _check_reachable(self, timeout_s: float) -> None:
        try:
            # urllib takes no user:password in a URL (MLflow does): it goes in a header.
            parts = urllib.parse.urlsplit(self.uri)
            netloc = parts.hostname or ""
            netloc = f"[{netloc}]" if ":" in netloc else netloc
            netloc += f":{parts.port}" if parts.port else ""
            health = urllib.parse.urlunsplit(parts._replace(netloc=netloc)).rstrip("/")
            request = urllib.request.Request(health + "/health")
            login = _login(parts)
            if login is not None:
                basic = base64.b64encode(":".join(login).encode()).decode()
                request.add_header("Authorization", f"Basic {basic}")
            with urllib.request.urlopen(request, timeout=timeout_s):
                pass
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingError(
                f"MLflow tracking server {self.shown_uri} is unreachable ({reason}); start it, fix "
                "tracking.uri / MLFLOW_TRACKING_URI, or unset them to use the local SQLite store"
            ) from None

    def _check_database_reachable(self, timeout_s: float) -> None:
        # MLflow retries a database it cannot reach for minutes; one connection attempt to its
        # host and port says in seconds whether anything listens there.
        import socket

        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(self.uri)
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
                f"MLflow tracking database {self.shown_uri} is unreachable ({err}); start it, "
                "fix tracking.uri / MLFLOW_TRACKING_URI, or unset them to use the local SQLite "
                "store"
            ) from None

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        try:
            yield
        except (MlflowException, OSError, SQLAlchemyError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err)
            password = urllib.parse.urlsplit(self.uri).password
            if password:  # MLflow's messages quote the URL it called
                first_line = str(first_line).replace(password, "***")
            raise TrackingError(
                f"could not {action} in MLflow store {self.shown_uri}: {first_line}; check that "
                "the store is reachable and writable, then re-run the stage (finished work is "
                "kept)"
            ) from None

    @contextmanager
    def run(self, run_id: str | None = None, run_name: str | None = None) -> Iterator[str]:
        """Start a new run, or continue ``run_id``; yields the run id."""
        with self._errors("start the run"):
            active = self._mlflow.start_run(run_id=run_id, run_name=run_name)
        # The wrapper outside the run: ending the run talks to the store too.
        with self._errors("log to the run"), active:
            yield active.info.run_id

    def run_exists(self, run_id: str) -> bool:
        """Whether the store holds ``run_id`` (an id from another store does not count)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True

    def changed_params(self, run_id: str, params: Mapping[str, Any]) -> list[str]:
        """The flat params whose value differs from the one ``run_id`` logged (as MLflow
        stores it: a string, passwords hidden); params the run has not logged do not count."""
        with self._errors("read the run's params"):
            logged = self.client.get_run(run_id).data.params
        params = _loggable(params)
        return sorted(k for k, v in params.items() if k in logged and logged[k] != str(v))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested params (as in params.yaml) flattened to ``section.key``; a URI's password
        (tracking.uri) is logged as ***."""
        self._mlflow.log_params(_loggable(flatten(params)))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._mlflow.set_tags(dict(tags))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Numeric values only; strings in a metrics dict are skipped."""
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        self._mlflow.log_metrics(numeric, step=step)

    def log_history(self, history: list[Mapping[str, float]]) -> None:
        """Per-epoch values as step series (step = epoch), in one batch request."""
        from mlflow.entities import Metric

        timestamp = int(1000 * time.time())
        metrics = [
            Metric(key, float(value), timestamp, int(record["epoch"]))
            for record in history
            for key, value in record.items()
            if key != "epoch"
        ]
        run_id = self._mlflow.active_run().info.run_id
        for start in range(0, len(metrics), 1000):  # the REST API takes 1000 per request
            self.client.log_batch(run_id, metrics=metrics[start : start + 1000])

    def log_datasets(self, parts: list[DatasetPart], name: str, source: str, sha256: str) -> None:
        """The prepared splits as run inputs (schema, digest and size; not the pixels)."""
        for part in parts:
            with warnings.catch_warnings():
                # A local path matches MLflow's local-artifact source twice; it warns and picks
                # that source, which is the right one.
                warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
                dataset = self._mlflow.data.from_numpy(
                    part.images, targets=part.labels, source=source, name=f"{name}-{part.context}"
                )
            self._mlflow.log_input(dataset, context=part.context, tags={"sha256": sha256})

    def log_artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        """Files (or folders) as run artifacts."""
        for path in paths:
            if path.is_dir():
                self._mlflow.log_artifacts(str(path), folder)
            else:
                self._mlflow.log_artifact(str(path), folder)

    def log_model(
        self,
        model: ConvVAE,
        model_file: Path,
        example_images: np.ndarray,
        registered_name: str | None,
        version_tags: Mapping[str, str],
        threshold: dict | None = None,
    ) -> str | None:
        """Log the PyTorch flavour and the scoring pyfunc; register the pyfunc (servable).

        example_images: float32 (n >= 2, C, H, W) in [0, 1] (pt2 export needs a batch of 2+).
        ``threshold``: the model's threshold record; the pyfunc scores and decides with it.
        Returns the new registered version, or None when not registering.
        """
        from mlflow.models import infer_signature

        from convvae.serving import PARAMS_EXAMPLE, _load_pyfunc

        example = example_images.astype(np.float32)
        scored = _load_pyfunc(str(model_file), threshold).predict(example)
        torch_signature = infer_signature(example, np.zeros_like(example))
        # pt2 (torch.export) stores a graph, not pickled code.
        self._mlflow.pytorch.log_model(
            Reconstructor(model).eval(),
            name="convvae-pytorch",
            input_example=example,
            signature=torch_signature,
            serialization_format="pt2",
            pip_requirements=_pip_requirements(),
            # torch.export has just run this graph on the example; reloading it to run it again
            # costs time in every evaluate. The pyfunc (the served flavour) is still validated.
            validate_serving_input=False,
        )
        with _quiet_model_logging():
            info = self._mlflow.pyfunc.log_model(
                name="convvae",
                loader_module="convvae.serving",
                data_path=str(model_file),
                input_example=example,
                signature=infer_signature(example, scored, params=PARAMS_EXAMPLE),
                registered_model_name=registered_name,
                model_config=threshold,
                # The package travels with the model, so it loads where convvae is not installed.
                code_paths=[str(Path(__file__).parents[1])],
                pip_requirements=_pip_requirements(),
            )
        if registered_name is None:
            return None
        version = str(info.registered_model_version)
        for key, value in version_tags.items():
            self.client.set_model_version_tag(registered_name, version, key, str(value))
        return version

    def find_run(self, tag: str, value: str) -> str | None:
        """Id of the newest run of this experiment tagged ``tag = value``, or None."""
        with self._errors("search the runs"):
            found = self.client.search_runs(
                [self._experiment_id()],
                filter_string=f"tags.`{tag}` = '{value}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
        return found[0].info.run_id if found else None

    def create_finished_run(self, run_name: str, tags: Mapping[str, str]) -> str:
        """A new, already finished run (a parent that children are nested under); its id."""
        with self._errors("create a run"):
            run = self.client.create_run(self._experiment_id(), run_name=run_name, tags=dict(tags))
            self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    def child_runs(self, parent_run_id: str) -> list[Any]:
        """The runs nested under ``parent_run_id`` (MLflow ``Run`` objects), newest first."""
        with self._errors("list the nested runs"):
            return self.client.search_runs(
                [self._experiment_id()],
                filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                order_by=["attributes.start_time DESC"],
            )

    @contextmanager
    def nested_run(
        self, parent_run_id: str, run_name: str, run_id: str | None = None
    ) -> Iterator[str]:
        """A new run nested under ``parent_run_id``, or the nested run ``run_id`` continued."""
        with self._errors("start the nested run"):
            if run_id is not None:
                active = self._mlflow.start_run(run_id=run_id)
            else:
                active = self._mlflow.start_run(
                    run_name=run_name, parent_run_id=parent_run_id, nested=True
                )
        with self._errors("log to the nested run"), active:
            yield active.info.run_id

    def _experiment_id(self) -> str:
        return self.client.get_experiment_by_name(self.cfg.experiment).experiment_id

    # --- the model registry -------------------------------------------------------------

    def model_versions(self, name: str) -> list[Any]:
        """All versions of a registered model, oldest first; an unknown name lists the known."""
        with self._errors("list model versions"):
            versions = self.client.search_model_versions(f"name = '{name}'")
            if not versions:
                known = sorted(m.name for m in self.client.search_registered_models())
                raise TrackingError(
                    f"no registered model named {name!r} in {self.shown_uri}; registered models: "
                    f"{', '.join(known) or 'none (run `make run` to train and register one)'}"
                )
        return sorted(versions, key=lambda v: int(v.version))

    def version_by_alias(self, name: str, alias: str) -> Any | None:
        """The version holding ``@alias``, or None when no version holds it; a store that
        fails to answer is a TrackingError (promote must not take it for "no champion")."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            with self._errors(f"read @{alias} of {name}"):
                raise

    def version(self, uri: str) -> Any:
        """The model version that ``models:/NAME@alias`` or ``models:/NAME/VERSION`` names;
        an unknown name, alias or version is a one-line error listing what exists."""
        name, sep, alias = uri.removeprefix("models:/").partition("@")
        if not sep:
            name, _, alias = name.partition("/")
        versions = self.model_versions(name)
        if sep:
            found = self.version_by_alias(name, alias)
            with self._errors(f"read the aliases of {name}"):
                known = sorted(self.client.get_registered_model(name).aliases)
        else:  # MLflow's "latest" is the highest version
            wanted = str(versions[-1].version) if alias == "latest" else alias
            found = next((v for v in versions if str(v.version) == wanted), None)
            known = [str(v.version) for v in versions]
        if found is None:
            what = "aliases" if sep else "versions"
            raise TrackingError(
                f"{uri}: no such {'alias' if sep else 'version'} of {name} in {self.shown_uri}; "
                f"{what}: {', '.join(f'@{k}' if sep else k for k in known) or 'none'} (use "
                "models:/NAME@alias or models:/NAME/VERSION; `convvae promote` sets @champion)"
            )
        return found

    def model_file(self, uri: str) -> Path:
        """Local path of the weights of ``models:/NAME/VERSION`` or ``models:/NAME@alias``."""
        with self._errors(f"download {uri}"):
            folder = Path(self._mlflow.artifacts.download_artifacts(uri))
        return folder / "data" / "model.pt"

    def set_alias(self, name: str, alias: str, version: str) -> None:
        with self._errors(f"set @{alias}"):
            self.client.set_registered_model_alias(name, alias, version)

    def tag_version(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        with self._errors(f"tag {name} version {version}"):
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version, key, str(value))

    def tag_registered_model(self, name: str, key: str, value: str) -> None:
        with self._errors(f"tag {name}"):
            self.client.set_registered_model_tag(name, key, value)


def _loggable(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat params with the password of any URI among them replaced by ***."""
    return {k: without_password(v) if isinstance(v, str) else v for k, v in flat.items()}


def _pip_requirements() -> list[str]:
    # Pinned from this environment; inferring them instead imports the model in a subprocess.
    return [
        f"{package}=={importlib.metadata.version(package)}"
        for package in ("torch", "numpy", "scikit-learn", "matplotlib", "pyyaml", "tqdm")
    ]


def open_tracker(cfg: TrackingConfig) -> Tracker | None:
    """A Tracker, or None when tracking.enabled is false."""
    return Tracker(cfg) if cfg.enabled else None
