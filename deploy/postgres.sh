#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for an MLflow backend store, listening on 127.0.0.1 only.
#   deploy/postgres.sh start DIR PORT   # prints the SQLAlchemy URI of database "mlflow"
#   deploy/postgres.sh stop DIR
# Needs Debian's postgresql (apt-get install postgresql); `make test` installs it as root.
# As root, the cluster runs as the "postgres" user (initdb refuses root).
set -euo pipefail
action=${1:?usage: postgres.sh start DIR PORT | stop DIR}
dir=${2:?data directory}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bin/pg_ctl" ] || { echo "error: PostgreSQL not found; apt-get install postgresql" >&2; exit 2; }
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case $action in
  start)
    port=${3:?port}
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
    as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust >/dev/null
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
    as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -q \
      -c "CREATE USER mlflow PASSWORD 'mlflow'" -c "CREATE DATABASE mlflow OWNER mlflow"
    echo "postgresql://mlflow:mlflow@127.0.0.1:$port/mlflow"
    ;;
  stop)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  *) echo "usage: postgres.sh start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
