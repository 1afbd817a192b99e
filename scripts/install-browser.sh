#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the report test (tests/test_report.py), idempotently.
#   chromium     /usr/bin/chromium, run as `chromium --headless --dump-dom file://RUN/report.html`
# Usage: scripts/install-browser.sh
# Runs apt-get directly as root, through sudo otherwise; does nothing when chromium is present.
# Exits 0 without installing anything on systems without apt-get (the browser test then skips
# with its reason); set LCDASK_CHROMIUM to a Chromium/Chrome binary to use another one.
set -euo pipefail

packages=(chromium)

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: apt-get not found; install Chromium yourself and point" \
         "LCDASK_CHROMIUM at it (the report test skips without it)" >&2
    exit 0
fi

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-browser: already installed: ${packages[*]} ($(command -v chromium || true))"
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install-browser: need root or sudo to install: ${missing[*]}" >&2
    exit 1
fi

echo "install-browser: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
command -v chromium >/dev/null
echo "install-browser: done ($(chromium --version 2>/dev/null || command -v chromium))"
