#!/usr/bin/env bash
# The team's MLflow tracking server: PostgreSQL backend store, artifacts proxied by the server.
#   BACKEND_STORE_URI=postgresql://mlflow:mlflow@db:5432/mlflow \
#   ARTIFACTS_DESTINATION=s3://convvae-artifacts   (or file:///srv/mlflow-artifacts) \
#   deploy/mlflow-server.sh
# Listens on 127.0.0.1 unless HOST says otherwise: an exposed, unauthenticated server is attacked.
set -euo pipefail
# MLflow's usage telemetry: off unless set otherwise.
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"
: "${BACKEND_STORE_URI:?set BACKEND_STORE_URI, e.g. postgresql://mlflow:mlflow@127.0.0.1:5432/mlflow}"
: "${ARTIFACTS_DESTINATION:?set ARTIFACTS_DESTINATION, e.g. s3://bucket or file:///srv/artifacts}"
exec mlflow server \
  --backend-store-uri "$BACKEND_STORE_URI" \
  --artifacts-destination "$ARTIFACTS_DESTINATION" \
  --host "${HOST:-127.0.0.1}" \
  --port "${PORT:-5000}" \
  ${ALLOWED_HOSTS:+--allowed-hosts "$ALLOWED_HOSTS"}
