#!/usr/bin/env bash
# The Dagster-on-PostgreSQL tests (tests/test_dagster_postgres.py) start their own throwaway
# PostgreSQL server from Debian's binaries (/usr/lib/postgresql/<major>/bin: initdb, pg_ctl).
# Install them from apt when they are missing; a no-op otherwise. Nothing is started here, and
# the tests never use a cluster the package may set up.
set -euo pipefail

shopt -s nullglob
found=(/usr/lib/postgresql/*/bin/initdb)
if (( ${#found[@]} )); then
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    SUDO=$(command -v sudo || true)
    if [[ -z "$SUDO" ]]; then
        echo "PostgreSQL is missing and this user cannot install it: run as root" \
             "'apt-get install -y --no-install-recommends postgresql'" \
             "(the PostgreSQL tests will skip; under CI they fail)" >&2
        exit 0
    fi
else
    SUDO=""
fi
export DEBIAN_FRONTEND=noninteractive
echo "installing postgresql for the Dagster-on-PostgreSQL tests (apt-get, ~30 s)..." >&2
# Refresh the package lists only when apt does not know the package yet.
if ! apt-cache show postgresql >/dev/null 2>&1; then
    $SUDO apt-get update -q
fi
$SUDO apt-get install -y -q --no-install-recommends postgresql
found=(/usr/lib/postgresql/*/bin/initdb)
(( ${#found[@]} ))
