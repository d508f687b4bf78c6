"""The MLflow model registry: versions, aliases (``@champion``) and tags, read and set with
one-line errors that list what exists."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from convvae.errors import TrackingError
from convvae.runtime.files import file_sha256
from convvae.runtime.uris import without_secrets
from convvae.tracking.store import store_errors

# MLflow's switch for its download progress bars.
_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
# The sha256 of a version's model file, set in the call that creates the version: whoever can
# write the artifact store could otherwise swap a promoted version's weights and reference
# under its alias, past the promotion gate (the team server lets only the promoting identity
# tag a version once it exists: convvae.tracking.server_auth).
MODEL_DIGEST_TAG = "convvae.model_sha256"


class Registry:
    """The registry of the store at ``uri``, through an open ``MlflowClient``."""

    def __init__(self, client: Any, uri: str) -> None:
        self.client = client
        self.uri = uri
        self.shown_uri = without_secrets(uri)  # for messages

    def model_versions(self, name: str) -> list[Any]:
        """All versions of a registered model, oldest first; an unknown name lists the known."""
        with store_errors(self.uri, "list model versions"):
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
            with store_errors(self.uri, f"read @{alias} of {name}"):
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
            with store_errors(self.uri, f"read the aliases of {name}"):
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
        """Local path of the weights of ``models:/NAME/VERSION`` or ``models:/NAME@alias``
        (an unknown name, alias or version: ``version``'s one-line error)."""
        version = self.version(uri)
        return self._download(f"models:/{version.name}/{version.version}") / "data" / "model.pt"

    def complete_version(self, uri: str, require_digest: bool = True) -> tuple[Path, str]:
        """The weights file of a registered version and its threshold record (JSON text).

        A version is usable only when complete: it carries the ``anomaly.threshold`` and
        ``MODEL_DIGEST_TAG`` tags (set in the same call that created it), the first is the
        record its served model decides with (the pyfunc's config), so the CLI, promote and
        serving share one threshold, and the second its model file's sha256. Otherwise a
        TrackingError: an edited tag, an overwritten artifact or an incomplete registration is
        refused. ``require_digest`` false: a version registered before digests were recorded
        is read without one (promote's sitting champion, only compared against)."""
        from mlflow.models import Model

        from convvae.anomaly.thresholds import THRESHOLD_TAG

        version = self.version(uri)
        where = f"{uri} (version {version.version})"
        required = (THRESHOLD_TAG, MODEL_DIGEST_TAG) if require_digest else (THRESHOLD_TAG,)
        for key in required:
            if key not in version.tags:
                raise TrackingError(
                    f"{where} has no {key} tag: an incomplete or older registration; re-run "
                    "`dvc repro -f evaluate` to register a complete version"
                )
        tag = version.tags[THRESHOLD_TAG]
        folder = self._download(f"models:/{version.name}/{version.version}")
        model_file = folder / "data" / "model.pt"
        digest = version.tags.get(MODEL_DIGEST_TAG)
        if digest is not None and file_sha256(model_file) != digest:
            raise TrackingError(
                f"{where}: its model file is not the one registered (sha256 differs from its "
                f"{MODEL_DIGEST_TAG} tag: the artifact was overwritten); re-register the version"
            )
        served = Model.load(str(folder)).flavors.get("python_function", {}).get("config")
        # Compared as canonical JSON text: a NaN in the record never equals itself.
        if _canonical(served) != _canonical(json.loads(tag)):
            raise TrackingError(
                f"{where}: its {THRESHOLD_TAG} tag differs from the threshold record its served "
                "model holds (the tag was edited after registration); re-register the version"
            )
        return model_file, tag

    def _download(self, uri: str) -> Path:
        """The version's artifacts in a temporary folder removed when the process exits
        (MLflow's own default keeps every download for good)."""
        import mlflow

        folder = tempfile.mkdtemp(prefix="convvae-model-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        # MLflow's progress bars only where someone watches: in a log they are a dozen lines
        # before the command's own one-line error.
        bars = os.environ.get(_PROGRESS_BAR)
        os.environ.setdefault(_PROGRESS_BAR, str(sys.stderr.isatty()).lower())
        try:
            with store_errors(self.uri, f"download {uri}"):
                return Path(mlflow.artifacts.download_artifacts(uri, dst_path=folder))
        finally:
            if bars is None:
                os.environ.pop(_PROGRESS_BAR, None)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point ``@alias`` of ``name`` at ``version``."""
        with store_errors(self.uri, f"set @{alias}"):
            self.client.set_registered_model_alias(name, alias, version)

    def tag_version(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """Set ``tags`` on one version of ``name``."""
        with store_errors(self.uri, f"tag {name} version {version}"):
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version, key, str(value))

    def tag_registered_model(self, name: str, key: str, value: str) -> None:
        """Set one tag on the registered model ``name`` (not on a version)."""
        with store_errors(self.uri, f"tag {name}"):
            self.client.set_registered_model_tag(name, key, value)

    def describe_version(self, name: str, version: str, description: str) -> None:
        """Set the description the registry UI shows for one version (its model card)."""
        with store_errors(self.uri, f"describe {name} version {version}"):
            self.client.update_model_version(name, version, description=description)


def _canonical(record: Any) -> str:
    return json.dumps(record, sort_keys=True)
