"""Every MLflow call of the project's runs: params, metrics, provenance, datasets and models
(the registry: ``convvae.tracking.registry``).

The embedded default store is ``sqlite:///<repository root>/mlflow.db`` with artifacts in
``<repository root>/mlartifacts``, so a fresh clone needs no server; ``tracking.uri`` or
``$MLFLOW_TRACKING_URI`` points the same code at a team server.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convvae.anomaly.thresholds import THRESHOLD_TAG
from convvae.config import TrackingConfig
from convvae.model.vae import ConvVAE, Reconstructor
from convvae.runtime.files import file_sha256
from convvae.runtime.uris import without_secrets
from convvae.tracking.probes import check_store
from convvae.tracking.provenance import repository_root
from convvae.tracking.quiet import quiet_model_logging
from convvae.tracking.registry import MODEL_DIGEST_TAG, Registry
from convvae.tracking.store import DEFAULT_ARTIFACTS, client_uri, resolve_tracking_uri, store_errors


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


class Tracker:
    """An open connection to one MLflow store and experiment."""

    def __init__(self, cfg: TrackingConfig, root: Path | None = None) -> None:
        import mlflow

        self.root = repository_root(root)
        self.uri = resolve_tracking_uri(cfg, self.root)
        # What messages, logs and output files show: the URI without its secrets.
        self.shown_uri = without_secrets(self.uri)
        self.cfg = cfg
        self._mlflow = mlflow
        # "Creating initial MLflow database tables..." on a new store is not news to a user.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        check_store(self.uri, cfg.timeout_s)
        mlflow.set_tracking_uri(client_uri(self.uri))
        with store_errors(self.uri, "open the experiment"):
            experiment = mlflow.get_experiment_by_name(cfg.experiment)
            if experiment is None:
                artifacts = None
                if self.uri.startswith("sqlite:"):
                    artifacts = (self.root / DEFAULT_ARTIFACTS).as_uri()
                mlflow.create_experiment(cfg.experiment, artifact_location=artifacts)
            mlflow.set_experiment(cfg.experiment)
        self.client = mlflow.MlflowClient()
        self.registry = Registry(self.client, self.uri)

    @contextmanager
    def run(self, run_id: str | None = None, run_name: str | None = None) -> Iterator[str]:
        """Start a new run, or continue ``run_id``; yields the run id."""
        with store_errors(self.uri, "start the run"):
            active = self._mlflow.start_run(run_id=run_id, run_name=run_name)
        # The wrapper outside the run: ending the run talks to the store too.
        with store_errors(self.uri, "log to the run"), active:
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
        stores it: a string, URI secrets hidden); params the run has not logged do not count."""
        with store_errors(self.uri, "read the run's params"):
            logged = self.client.get_run(run_id).data.params
        params = _loggable(params)
        return sorted(k for k, v in params.items() if k in logged and logged[k] != str(v))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested params (as in params.yaml) flattened to ``section.key``; a URI's secrets
        (tracking.uri) are logged as ***."""
        self._mlflow.log_params(_loggable(flatten(params)))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tags on the active run."""
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
        record_json: dict | None = None,
    ) -> str | None:
        """Log the PyTorch flavour and the scoring pyfunc; register the pyfunc (servable).

        example_images: float32 (n >= 2, C, H, W) in [0, 1] (pt2 export needs a batch of 2+).
        ``record_json``: the model's threshold record (its JSON); the pyfunc decides with it and
        the version carries it as its ``anomaly.threshold`` tag. Returns the new registered
        version, or None when not registering.
        """
        from mlflow.models import infer_signature

        from convvae import __version__
        from convvae.serving import PACKAGE_VERSION_KEY, PARAMS_EXAMPLE, _load_pyfunc

        example = example_images.astype(np.float32)
        scored = _load_pyfunc(str(model_file), record_json).predict(example)
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
        with quiet_model_logging():
            info = self._mlflow.pyfunc.log_model(
                name="convvae",
                loader_module="convvae.serving",
                data_path=str(model_file),
                input_example=example,
                signature=infer_signature(example, scored, params=PARAMS_EXAMPLE),
                model_config=record_json,
                # No code in the artifact (its writers could run it in every server): the loader
                # is the installed convvae of the version named here (convvae.serving checks it).
                metadata={PACKAGE_VERSION_KEY: __version__},
                pip_requirements=_pip_requirements(),
            )
        if registered_name is None:
            return None
        # Version and tags in one call: a version without its threshold record and its model
        # file's digest never exists (Registry.complete_version checks both).
        tags = {key: str(value) for key, value in version_tags.items()}
        tags[MODEL_DIGEST_TAG] = file_sha256(model_file)
        if record_json is not None:
            tags[THRESHOLD_TAG] = json.dumps(record_json)
        with store_errors(self.uri, f"register {registered_name}"), quiet_model_logging():
            registered = self._mlflow.register_model(info.model_uri, registered_name, tags=tags)
        return str(registered.version)

    def find_run(self, tag: str, value: str) -> str | None:
        """Id of the newest run of this experiment tagged ``tag = value``, or None."""
        with store_errors(self.uri, "search the runs"):
            found = self.client.search_runs(
                [self._experiment_id()],
                filter_string=f"tags.`{tag}` = '{value}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
        return found[0].info.run_id if found else None

    def create_finished_run(self, run_name: str, tags: Mapping[str, str]) -> str:
        """A new, already finished run (a parent that children are nested under); its id."""
        with store_errors(self.uri, "create a run"):
            run = self.client.create_run(self._experiment_id(), run_name=run_name, tags=dict(tags))
            self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    def child_runs(self, parent_run_id: str) -> list[Any]:
        """The runs nested under ``parent_run_id`` (MLflow ``Run`` objects), newest first."""
        with store_errors(self.uri, "list the nested runs"):
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
        with store_errors(self.uri, "start the nested run"):
            if run_id is not None:
                active = self._mlflow.start_run(run_id=run_id)
            else:
                active = self._mlflow.start_run(
                    run_name=run_name, parent_run_id=parent_run_id, nested=True
                )
        with store_errors(self.uri, "log to the nested run"), active:
            yield active.info.run_id

    def _experiment_id(self) -> str:
        return self.client.get_experiment_by_name(self.cfg.experiment).experiment_id


def _loggable(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat params with the secrets of any URI among them replaced by ***."""
    return {k: without_secrets(v) if isinstance(v, str) else v for k, v in flat.items()}


def _pip_requirements() -> list[str]:
    # Pinned from this environment; inferring them instead imports the model in a subprocess.
    return [
        f"{package}=={importlib.metadata.version(package)}"
        for package in ("torch", "numpy", "scikit-learn", "matplotlib", "pyyaml", "tqdm")
    ]


def open_tracker(cfg: TrackingConfig) -> Tracker | None:
    """A Tracker, or None when tracking.enabled is false."""
    return Tracker(cfg) if cfg.enabled else None
