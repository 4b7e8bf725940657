#!/usr/bin/env bash
# The browser test drives Debian's chromium through playwright (never `playwright install`,
# which downloads a browser). Install it from apt when it is missing; a no-op otherwise.
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [[ -x "$CHROMIUM" ]]; then
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    SUDO=$(command -v sudo || true)
    if [[ -z "$SUDO" ]]; then
        echo "chromium is missing and this user cannot install it: run as root" \
             "'apt-get install -y --no-install-recommends chromium' (the browser test will skip)" >&2
        exit 0
    fi
else
    SUDO=""
fi
export DEBIAN_FRONTEND=noninteractive
echo "installing chromium for the browser test (apt-get, ~20 s)..." >&2
# Refresh the package lists only when apt does not know the package yet.
if ! apt-cache show chromium >/dev/null 2>&1; then
    $SUDO apt-get update -q
fi
$SUDO apt-get install -y -q --no-install-recommends chromium
test -x "$CHROMIUM"
