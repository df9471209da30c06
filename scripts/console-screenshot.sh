#!/usr/bin/env bash
# Remake docs/console.png: the console browser test (real server, real mail to deferring, bouncing and accepting
# loopback destinations, one queue suspended from the page) saves the page as it stands at the end.
# Needs chromium and chromium-driver (scripts/test.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
CONSOLE_SCREENSHOT="$PWD/docs/console.png" cargo test -p mta-tests --test console_browser -- --nocapture
echo "wrote docs/console.png"
