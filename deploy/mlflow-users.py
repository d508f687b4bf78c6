"""Create the team server's two identities where they are missing (run once, as its admin).

- the pipeline's (``PIPELINE_USER``, default ``pipeline``): trains, logs and registers versions;
- the promoter's (``PROMOTER_USER``, default ``promoter``, listed in the server's
  ``CONVVAE_PROMOTERS``): runs ``convvae promote``, the only one that may move an alias.

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 MLFLOW_TRACKING_USERNAME=admin \\
    MLFLOW_TRACKING_PASSWORD=... PIPELINE_PASSWORD=... PROMOTER_PASSWORD=... \\
    python deploy/mlflow-users.py

The promoter needs EDIT on each registered model it promotes; the pipeline's identity, which
creates the model and so manages it, grants it (``--grant MODEL``, run as the pipeline or the
admin).
"""

import argparse
import os
import sys

from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client


def identity(role: str) -> tuple[str, str]:
    user = os.environ.get(f"{role}_USER", role.lower())
    password = os.environ.get(f"{role}_PASSWORD")
    if not password:
        sys.exit(f"mlflow-users: set {role}_PASSWORD (the {user} identity's password)")
    return user, password


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grant", metavar="MODEL", help="give the promoter EDIT on MODEL")
    args = parser.parse_args()
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        sys.exit("mlflow-users: set MLFLOW_TRACKING_URI (the team server)")
    users = get_app_client("basic-auth", tracking_uri=uri)
    if args.grant:
        promoter = os.environ.get("PROMOTER_USER", "promoter")
        users.grant_user_permission(promoter, "registered_model", args.grant, "EDIT")
        print(f"mlflow-users: {promoter} may edit {args.grant}")
        return
    for role in ("PIPELINE", "PROMOTER"):
        user, password = identity(role)
        try:
            users.create_user(user, password)
            print(f"mlflow-users: created {user}")
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                sys.exit(f"mlflow-users: could not create {user}: {error.message}")
            print(f"mlflow-users: {user} exists")


if __name__ == "__main__":
    main()
