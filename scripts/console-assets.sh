#!/bin/sh
# Rebuilds the console's vendored front-end files (src/agbox/server/console_assets/xterm.*) from npm.
# Run by hand when upgrading xterm.js; the results are committed, so `make run` needs no Node.js.
set -eu
VERSION=6.0.0
HERE=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
cd "$BUILD"
npm init -y >/dev/null
npm install --no-audit --no-fund "@xterm/xterm@$VERSION" >/dev/null
sed '/^\/\/# sourceMappingURL/d' node_modules/@xterm/xterm/lib/xterm.mjs > "$HERE/src/agbox/server/console_assets/xterm.mjs"
cp node_modules/@xterm/xterm/css/xterm.css "$HERE/src/agbox/server/console_assets/xterm.css"
cp node_modules/@xterm/xterm/LICENSE "$HERE/src/agbox/server/console_assets/xterm-LICENSE.txt"
