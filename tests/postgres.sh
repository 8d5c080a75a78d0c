#!/usr/bin/env bash
# A PostgreSQL server for the shared-study tests, from Debian's package.
#   eval "$(bash tests/postgres.sh start)"   installs it if missing, starts it, creates the test role and
#                                            database, and prints: export AUTOACCEL_TEST_POSTGRES=postgresql://...
#   bash tests/postgres.sh stop              stops the server it started
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { as_root runuser -u postgres -- "$@"; }

cluster() { pg_lsclusters --no-header | awk 'NR == 1 {print $1, $2}'; }

case "${1:-}" in
  start)
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
      as_root apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >&2
    fi
    if [ -z "$(cluster)" ]; then
      version=$(ls /usr/lib/postgresql | sort -n | tail -1)
      as_root pg_createcluster "$version" main >&2
    fi
    read -r version name <<<"$(cluster)"
    as_root pg_ctlcluster "$version" "$name" start >&2 2>/dev/null || true
    port=$(pg_lsclusters --no-header | awk 'NR == 1 {print $3}')
    for _ in $(seq 1 30); do as_postgres pg_isready -q -p "$port" && break; sleep 0.5; done
    # the fault tests run several workers at once, each with its pool and heartbeat: more than the default 100
    if [ "$(as_postgres psql -q -p "$port" -tAc 'SHOW max_connections')" -lt 300 ]; then
      as_postgres psql -q -p "$port" -c "ALTER SYSTEM SET max_connections = 300" >&2
      as_root pg_ctlcluster "$version" "$name" restart >&2
      for _ in $(seq 1 30); do as_postgres pg_isready -q -p "$port" && break; sleep 0.5; done
    fi
    as_postgres psql -q -p "$port" -tc "SELECT 1 FROM pg_roles WHERE rolname = 'autoaccel'" | grep -q 1 ||
      as_postgres psql -q -p "$port" -c "CREATE ROLE autoaccel LOGIN PASSWORD 'autoaccel'" >&2
    as_postgres psql -q -p "$port" -tc "SELECT 1 FROM pg_database WHERE datname = 'autoaccel_test'" | grep -q 1 ||
      as_postgres psql -q -p "$port" -c "CREATE DATABASE autoaccel_test OWNER autoaccel" >&2
    echo "export AUTOACCEL_TEST_POSTGRES=postgresql://autoaccel:autoaccel@127.0.0.1:$port/autoaccel_test"
    ;;
  stop)
    read -r version name <<<"$(cluster)"
    as_root pg_ctlcluster "$version" "$name" stop >&2 || true
    ;;
  *)
    echo "usage: bash tests/postgres.sh start|stop" >&2
    exit 2
    ;;
esac
