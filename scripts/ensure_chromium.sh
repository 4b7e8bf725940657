#!/usr/bin/env bash
# The browser test drives Debian's chromium through playwright (never `playwright install`,
# which downloads a browser): installed from apt when missing.
exec bash "$(dirname "$0")/ensure_debian_package.sh" chromium "${CHROMIUM:-/usr/bin/chromium}" \
    "the browser tests"
