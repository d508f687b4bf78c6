"""Every MLflow call of the project: runs, metrics, provenance, models and the registry.

The embedded default store is ``sqlite:///<repository root>/mlflow.db`` with artifacts in
``<repository root>/mlartifacts``, so a fresh clone needs no server; ``tracking.uri`` or
``$MLFLOW_TRACKING_URI`` points the same code at a team server.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import os
import sys
import time
import urllib.error
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
from convvae.model import ConvVAE, Reconstructor
from convvae.provenance import repository_root

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
# What MLflow's registry prints to stderr itself when a model version is created; the stages
# print their own line ("registered <name> version <n>").
_REGISTRY_CHATTER = ("Registered model ", "Created version ", "Successfully registered model ")


def resolve_tracking_uri(cfg: TrackingConfig, root: Path) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else the embedded SQLite store under ``root``."""
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / DEFAULT_DB}"


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
        self.cfg = cfg
        self._mlflow = mlflow
        # "Creating initial MLflow database tables..." on a new store is not news to a user.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        if self.uri.startswith(("http://", "https://")):
            self._limit_http_retries(cfg.timeout_s)
            self._check_reachable(cfg.timeout_s)
        mlflow.set_tracking_uri(self.uri)
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

    def _check_reachable(self, timeout_s: float) -> None:
        try:
            with urllib.request.urlopen(f"{self.uri.rstrip('/')}/health", timeout=timeout_s):
                pass
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingError(
                f"MLflow tracking server {self.uri} is unreachable ({reason}); start it, fix "
                "tracking.uri / MLFLOW_TRACKING_URI, or unset them to use the local SQLite store"
            ) from None

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        from mlflow.exceptions import MlflowException

        try:
            yield
        except (MlflowException, OSError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err)
            raise TrackingError(
                f"could not {action} in MLflow store {self.uri}: {first_line}; check that the "
                "store is reachable and writable, then re-run the stage (finished work is kept)"
            ) from None

    @contextmanager
    def run(self, run_id: str | None = None, run_name: str | None = None) -> Iterator[str]:
        """Start a new run, or continue ``run_id``; yields the run id."""
        with self._errors("start the run"):
            active = self._mlflow.start_run(run_id=run_id, run_name=run_name)
        with active, self._errors("log to the run"):
            yield active.info.run_id

    def run_exists(self, run_id: str) -> bool:
        """Whether the store holds ``run_id`` (an id from another store does not count)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested params (as in params.yaml) flattened to ``section.key``."""
        self._mlflow.log_params(flatten(params))

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
                code_paths=[str(Path(__file__).parent)],
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
        with active, self._errors("log to the nested run"):
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
                    f"no registered model named {name!r} in {self.uri}; registered models: "
                    f"{', '.join(known) or 'none (run `make run` to train and register one)'}"
                )
        return sorted(versions, key=lambda v: int(v.version))

    def version_by_alias(self, name: str, alias: str) -> Any | None:
        """The version holding ``@alias``, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

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
        else:
            found = next((v for v in versions if str(v.version) == alias), None)
            known = [str(v.version) for v in versions]
        if found is None:
            what = "aliases" if sep else "versions"
            raise TrackingError(
                f"{uri}: no such {'alias' if sep else 'version'} of {name} in {self.uri}; "
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


def _pip_requirements() -> list[str]:
    # Pinned from this environment; inferring them instead imports the model in a subprocess.
    return [
        f"{package}=={importlib.metadata.version(package)}"
        for package in ("torch", "numpy", "scikit-learn", "matplotlib", "pyyaml", "tqdm")
    ]


def open_tracker(cfg: TrackingConfig) -> Tracker | None:
    """A Tracker, or None when tracking.enabled is false."""
    return Tracker(cfg) if cfg.enabled else None
