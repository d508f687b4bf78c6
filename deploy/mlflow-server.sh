#!/usr/bin/env bash
# The team's MLflow tracking server: PostgreSQL backend store, artifacts proxied by the server,
# and MLflow's basic-auth login, with aliases left to the promoting identity
# (src/convvae/tracking/server_auth.py).
#   BACKEND_STORE_URI=postgresql://mlflow:...@db:5432/mlflow \
#   ARTIFACTS_DESTINATION=s3://convvae-artifacts   (or file:///srv/mlflow-artifacts) \
#   AUTH_DATABASE_URI=sqlite:////srv/mlflow-auth/users.db   (users and permissions) \
#   MLFLOW_AUTH_ADMIN_PASSWORD=...   (the admin user's, created on first start) \
#   MLFLOW_FLASK_SERVER_SECRET_KEY=...   (CSRF protection of the login's forms) \
#   CONVVAE_PROMOTERS=promoter       (the users that may set aliases) \
#   deploy/mlflow-server.sh
# Listens on 127.0.0.1 unless HOST says otherwise. Basic auth sends passwords in every request:
# put TLS in front of any server that is reached over a network (docs/tracking.md).
set -euo pipefail
# MLflow's usage telemetry: off unless set otherwise.
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"
: "${BACKEND_STORE_URI:?set BACKEND_STORE_URI, e.g. postgresql://mlflow:PASSWORD@127.0.0.1:5432/mlflow}"
: "${ARTIFACTS_DESTINATION:?set ARTIFACTS_DESTINATION, e.g. s3://bucket or file:///srv/artifacts}"
: "${AUTH_DATABASE_URI:?set AUTH_DATABASE_URI (where users and permissions live), e.g. sqlite:////srv/mlflow-auth/users.db}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD: the admin password MLflow creates its admin user with}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY: a long random string (CSRF protection; the same on every server replica)}"
# The auth config holds the auth database's URI: written into a folder only this user can read.
config_dir="$(mktemp -d)"
trap 'rm -rf "$config_dir"' EXIT
cat > "$config_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = ${AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = convvae.tracking.server_auth:authenticate_request
grant_default_workspace_access = false
INI
export MLFLOW_AUTH_CONFIG_PATH="$config_dir/basic_auth.ini"
mlflow server \
  --app-name basic-auth \
  --backend-store-uri "$BACKEND_STORE_URI" \
  --artifacts-destination "$ARTIFACTS_DESTINATION" \
  --host "${HOST:-127.0.0.1}" \
  --port "${PORT:-5000}" \
  ${ALLOWED_HOSTS:+--allowed-hosts "$ALLOWED_HOSTS"} &
server=$!
# Stop the server with this script (the config folder goes with it).
trap 'kill "$server" 2>/dev/null; wait "$server"; rm -rf "$config_dir"' EXIT INT TERM
wait "$server"
