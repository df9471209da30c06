#!/usr/bin/env bash
# Fuzz campaign: every cargo-fuzz target in fuzz/ for SECONDS each, one after the other, one libFuzzer worker,
# at low priority (nice 15) so a shared machine stays usable. Needs a nightly toolchain (cargo-fuzz builds with
# -Zsanitizer); installs cargo-fuzz when it is missing.
#
#   scripts/fuzz.sh SECONDS            # every target
#   FUZZ_TARGETS="dsn config" scripts/fuzz.sh 60
#   FUZZ_TOOLCHAIN=nightly-2026-05-15 scripts/fuzz.sh 600
#
# New corpus entries go to fuzz/corpus/<target>/ (the seeds in fuzz/seeds/<target>/ are only read), crashes to
# fuzz/artifacts/<target>/. Logs and a summary table (executions, libFuzzer's final cov/ft, corpus, crashes)
# go to fuzz/runs/<UTC time>/. Exit status: 0 when no target crashed, 1 when one did, 2 on a setup problem.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: $0 SECONDS   (run every fuzz target for SECONDS each)" >&2
    exit 2
}
[ $# -eq 1 ] || usage
SECONDS_EACH=$1
[[ "$SECONDS_EACH" =~ ^[1-9][0-9]*$ ]] || usage

TOOLCHAIN=${FUZZ_TOOLCHAIN:-nightly}
if ! cargo "+$TOOLCHAIN" --version >/dev/null 2>&1; then
    cat >&2 <<EOF
fuzz.sh: the Rust toolchain '$TOOLCHAIN' is not installed, and cargo-fuzz needs a nightly one
(its sanitizer and coverage flags are unstable). Install it with:
    rustup toolchain install nightly
or name an installed nightly with FUZZ_TOOLCHAIN=nightly-YYYY-MM-DD.
On stable, the same fuzz logic runs as property tests:
    cargo test -p mta-smtp --test proptests   (and -p mta-spool, -p mta-core, -p mta-server)
EOF
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    if ! nice -n 15 cargo install cargo-fuzz --locked; then
        echo "fuzz.sh: could not install cargo-fuzz" >&2
        exit 2
    fi
fi

if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo "+$TOOLCHAIN" fuzz list --fuzz-dir fuzz)
fi
if [ ${#targets[@]} -eq 0 ]; then
    echo "fuzz.sh: no fuzz targets found in fuzz/" >&2
    exit 2
fi

# Inputs longer than libFuzzer's default (4096 or the longest seed) only where the target's input is a stream.
max_len() {
    case "$1" in
        data_reader | reply_parser) echo 65536 ;;
        dsn | http_inject | spool_record | config) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

run_dir="fuzz/runs/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$run_dir"
summary="$run_dir/summary.md"

echo "fuzz.sh: building ${#targets[@]} targets with $TOOLCHAIN" >&2
if ! nice -n 15 cargo "+$TOOLCHAIN" fuzz build --fuzz-dir fuzz >"$run_dir/build.log" 2>&1; then
    tail -n 30 "$run_dir/build.log" >&2
    echo "fuzz.sh: build failed (log: $run_dir/build.log)" >&2
    exit 2
fi

{
    echo "Fuzz campaign $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+changes'), $TOOLCHAIN, ${SECONDS_EACH} s per target"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown), $(nproc 2>/dev/null || echo '?') cores"
    echo
    echo "| target | seconds | executions | exec/s | cov | ft | corpus (files) | new units | crashes |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
} >"$summary"

crashed=0
for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    seeds="fuzz/seeds/$t"
    artifacts="fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    [ -d "$seeds" ] || seeds=""
    before=$(find "$artifacts" -type f | wc -l)
    log="$run_dir/$t.log"
    echo "fuzz.sh: $t for ${SECONDS_EACH}s (log: $log)" >&2
    start=$(date +%s)
    # -timeout: one input taking 10 s is a hang worth an artifact; -rss_limit_mb: the same for memory.
    nice -n 15 cargo "+$TOOLCHAIN" fuzz run --fuzz-dir fuzz "$t" "$corpus" $seeds -- \
        -max_total_time="$SECONDS_EACH" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1
    status=$?
    elapsed=$(($(date +%s) - start))
    after=$(find "$artifacts" -type f | wc -l)
    new_crashes=$((after - before))
    if [ $status -ne 0 ] && [ $new_crashes -eq 0 ]; then
        new_crashes="failed (exit $status)"
    fi
    [ "$new_crashes" != 0 ] && crashed=1
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$')
    speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$')
    units=$(grep -o 'stat::new_units_added: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$')
    # The last status line libFuzzer printed (DONE on a clean finish).
    last=$(grep -E '^#[0-9]+' "$log" | grep -o 'cov: [0-9]* ft: [0-9]*' | tail -n 1)
    cov=$(echo "$last" | awk '{print $2}')
    ft=$(echo "$last" | awk '{print $4}')
    files=$(find "$corpus" -type f | wc -l)
    echo "| $t | $elapsed | ${execs:-?} | ${speed:-?} | ${cov:-?} | ${ft:-?} | $files | ${units:-?} | $new_crashes |" >>"$summary"
    if [ "$new_crashes" != 0 ]; then
        echo "fuzz.sh: $t: crash or failure, see $log and $artifacts/" >&2
    fi
done

echo >>"$summary"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)" >>"$summary"
cat "$summary"
exit $crashed
