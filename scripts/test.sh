#!/usr/bin/env bash
# The one test command (README, CI): installs what the tests need, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v strace >/dev/null 2>&1 || need_apt+=(strace)
# tests/tests/open_relay_nmap.rs: nmap's smtp-open-relay script, a relay check that is not ours.
command -v nmap >/dev/null 2>&1 || need_apt+=(nmap)
# tests/tests/dkim_opendkim.rs: OpenDKIM (offline test mode) verifies our DKIM signatures.
[ -x /usr/sbin/opendkim ] || need_apt+=(opendkim opendkim-tools)
# tests/tests/fleet_redis.rs: a real Redis shared by three nodes (started by the test, no persistence).
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# tests/tests/amqp_crash.rs: a real RabbitMQ broker (started by the test on its own ports and data dirs).
[ -x /usr/sbin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
# tests/tests/console_browser.rs: the operator console in a real headless Chromium, driven over WebDriver.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    echo "installing test tools: ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# dkimpy verifies our DKIM signatures independently (PyNaCl for Ed25519).
if ! python3 -c "import dkim, nacl" >/dev/null 2>&1; then
    echo "installing test tools: dkimpy pynacl (PyPI)"
    python3 -m pip install --quiet dkimpy pynacl
fi

# tests/tests/openapi_conformance.rs: the served OpenAPI document validated, and the server's answers checked
# against it by generated requests.
if ! python3 -c "import openapi_spec_validator" >/dev/null 2>&1 || ! command -v st >/dev/null 2>&1; then
    echo "installing test tools: openapi-spec-validator schemathesis (PyPI)"
    python3 -m pip install --quiet openapi-spec-validator schemathesis
fi

# promtool (Prometheus's linter) checks /metrics: taken from Debian's prometheus package without installing it
# (installing would start a Prometheus service).
if [ ! -x target/tools/promtool ] && ! command -v promtool >/dev/null 2>&1; then
    echo "fetching promtool (Debian package prometheus)"
    mkdir -p target/tools/deb
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    (cd target/tools/deb && { apt-get download prometheus >/dev/null 2>&1 || { $SUDO apt-get update -qq && apt-get download prometheus >/dev/null; }; } \
        && dpkg-deb -x prometheus_*.deb root && cp root/usr/bin/promtool ../promtool) \
        || echo "promtool could not be fetched; its test is skipped outside CI"
    rm -rf target/tools/deb
fi

# The end-to-end tests start the real binary: build it first so they find it next to the test executables.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- "$@"
