#!/usr/bin/env bash
# Install the system (Debian/Ubuntu) packages lcdask's optional paths need, idempotently:
#   astrometry.net                          solve-field, build-astrometry-index (local plate solving)
#   astrometry-data-tycho2-07..10-19        index files for blind solving of real fields
#                                           (quads 22'-2000', fields from about 22'; about 200 MB
#                                           of downloads; finer 4200/5200-series: see the README)
# Usage: scripts/install-system-deps.sh [--minimal]
#   --minimal   only astrometry.net (the tests build their own index files from a catalog)
# Runs apt-get directly as root, through sudo otherwise; does nothing when everything is present.
# Exits 0 without installing anything on systems without apt-get (the tests then skip the
# solve-field paths).
set -euo pipefail

packages=(astrometry.net)
if [[ "${1:-}" != "--minimal" ]]; then
    packages+=(
        astrometry-data-tycho2-07 astrometry-data-tycho2-08 astrometry-data-tycho2-09
        astrometry-data-tycho2-10-19
    )
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: apt-get not found; install astrometry.net yourself" \
         "(e.g. 'brew install astrometry-net' or conda-forge 'astrometry')" >&2
    exit 0
fi

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-system-deps: already installed: ${packages[*]}"
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install-system-deps: need root or sudo to install: ${missing[*]}" >&2
    exit 1
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
command -v solve-field >/dev/null && command -v build-astrometry-index >/dev/null
echo "install-system-deps: done ($(command -v solve-field))"
