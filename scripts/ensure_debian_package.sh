#!/usr/bin/env bash
# Install a Debian package the tests need when a file it provides is missing; a no-op
# otherwise. Usage: ensure_debian_package.sh PACKAGE 'GLOB' 'what it is for'
# (GLOB: a file the package installs, e.g. '/usr/lib/postgresql/*/bin/initdb').
set -euo pipefail

package=$1 glob=$2 purpose=$3
shopt -s nullglob
# Files that exist: a plain path (no wildcard) is not expanded, so nullglob alone would keep it
# even when it is missing (chromium was never installed that way).
present() {
    local f
    # shellcheck disable=SC2206  # the glob must expand
    local matches=($glob)
    for f in "${matches[@]}"; do
        [[ -e $f ]] && return 0
    done
    return 1
}
if present; then
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    SUDO=$(command -v sudo || true)
    if [[ -z "$SUDO" ]]; then
        echo "$package is missing and this user cannot install it: run as root" \
             "'apt-get install -y --no-install-recommends $package' ($purpose skip;" \
             "under CI they fail)" >&2
        exit 0
    fi
else
    SUDO=""
fi
export DEBIAN_FRONTEND=noninteractive
echo "installing $package for $purpose (apt-get)..." >&2
# Refresh the package lists only when apt does not know the package yet.
if ! apt-cache show "$package" >/dev/null 2>&1; then
    $SUDO apt-get update -q
fi
$SUDO apt-get install -y -q --no-install-recommends "$package"
present
