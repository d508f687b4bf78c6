"""The team server's login: MLflow's basic auth, with aliases left to the promoting identity.

An alias (``@champion``) decides which version every ``models:/NAME@champion`` user serves, and
``convvae promote`` sets it only after the anomaly gate. MLflow's own permissions cannot keep it
there: setting an alias needs the same EDIT permission on a registered model as creating a
version or tagging one, which the training identity must have. So the server runs MLflow's
``basic-auth`` app with this module as its ``authorization_function``
(deploy/mlflow-server.sh writes the config): every request is authenticated as MLflow does it,
and setting or deleting an alias, or a tag of an existing model version, is refused (403) to
anyone not listed in ``CONVVAE_PROMOTERS`` (comma-separated user names, default ``promoter``).
A version's tags are its registration record (its threshold record and its model file's
sha256, ``convvae.tracking.registry``), set in the call that creates it: a trainer who could
re-tag a promoted version could also swap its artifact and the digest that guards it. MLflow's
permission checks still apply to the promoters as to everyone else.

Loaded only inside the server process (it imports Flask's request context).
"""

from __future__ import annotations

import os

from flask import Response, request
from mlflow.server.auth import authenticate_request_basic_auth

PROMOTERS_VARIABLE = "CONVVAE_PROMOTERS"
DEFAULT_PROMOTERS = "promoter"
# The REST and the UI's paths (/api/2.0/mlflow/..., /ajax-api/2.0/mlflow/...) both end so.
PROMOTER_PATHS = {
    "/registered-models/alias": "set or delete aliases",
    "/model-versions/set-tag": "tag an existing model version",
    "/model-versions/delete-tag": "untag a model version",
}
CHANGES = ("POST", "PUT", "PATCH", "DELETE")


def promoters() -> set[str]:
    """The user names that may set and delete aliases."""
    names = os.environ.get(PROMOTERS_VARIABLE, DEFAULT_PROMOTERS)
    return {name.strip() for name in names.split(",") if name.strip()}


def authenticate_request():
    """MLflow's basic-auth check, then the promoters' rule (module docstring); MLflow calls it for
    every protected request, within Flask's request context."""
    found = authenticate_request_basic_auth()
    if isinstance(found, Response):  # no or wrong credentials: MLflow's 401
        return found
    path = request.path.rstrip("/")
    action = next((act for end, act in PROMOTER_PATHS.items() if path.endswith(end)), None)
    allowed = promoters()
    if request.method in CHANGES and action and found.username not in allowed:
        return Response(
            f"user {found.username!r} may not {action}: only the promoting "
            f"identity ({', '.join(sorted(allowed))}) may; run `convvae promote` as it "
            f"(MLFLOW_TRACKING_USERNAME), or list the user in {PROMOTERS_VARIABLE} on the server",
            status=403,
            mimetype="text/plain",
        )
    return found
