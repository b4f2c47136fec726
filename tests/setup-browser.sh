#!/bin/sh
# Install what tests/test_dashboard.py needs, only when it is missing:
# Debian's chromium at /usr/bin/chromium (apt; needs root) and the npm
# package playwright-core in tests/node_modules (pinned in
# tests/package.json and tests/package-lock.json; it downloads no browser).
# Never fails the build: when an install is impossible the dashboard test
# skips and says why.
# usage: sh tests/setup-browser.sh
cd "$(dirname "$0")" || exit 0
mkdir -p out

if [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "setup-browser: installing chromium (apt-get)"
        { apt-get update && DEBIAN_FRONTEND=noninteractive \
              apt-get install -y --no-install-recommends chromium; } \
            > out/setup-browser-apt.log 2>&1 ||
            echo "setup-browser: apt-get failed (see tests/out/setup-browser-apt.log)"
    else
        echo "setup-browser: /usr/bin/chromium missing and apt-get unusable (need root)"
    fi
fi

if [ ! -f node_modules/playwright-core/package.json ] ||
   [ ! -f node_modules/@modelcontextprotocol/sdk/package.json ] ||
   [ ! -f node_modules/@modelcontextprotocol/client/package.json ]; then
    if command -v npm >/dev/null 2>&1; then
        echo "setup-browser: installing tests/package.json (npm ci)"
        PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund \
            > out/setup-browser-npm.log 2>&1 ||
            echo "setup-browser: npm ci failed (see tests/out/setup-browser-npm.log)"
    else
        echo "setup-browser: npm missing; cannot install playwright-core"
    fi
fi
exit 0
