#!/usr/bin/env bash
# The PostgreSQL tests (tests/pg_server.py) start their own throwaway server from Debian's
# binaries (/usr/lib/postgresql/<major>/bin: initdb, pg_ctl): installed from apt when missing.
# Nothing is started here, and the tests never use a cluster the package may set up.
exec bash "$(dirname "$0")/ensure_debian_package.sh" postgresql \
    '/usr/lib/postgresql/*/bin/initdb' "the PostgreSQL tests"
