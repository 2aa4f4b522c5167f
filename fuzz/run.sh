#!/usr/bin/env bash
# Build the fuzz targets and run each briefly from its committed seed corpus.
# A crash (panic, failed assertion, timeout or OOM) fails the script and
# leaves the input in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh [TARGET...]       FUZZ_SECONDS per target (default 20)
#
# The toolchain is stable: `-s none` (no sanitizer) is what works there,
# since AddressSanitizer needs nightly's -Zsanitizer. The targets are safe
# Rust, so coverage-guided fuzzing without ASan still finds panics, bad
# assertions, hangs and runaway memory. New corpus entries go to
# fuzz/target/corpus/<target> (ignored by git), never to the seeds.
set -euo pipefail
cd "$(dirname "$0")"

secs=${FUZZ_SECONDS:-20}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is missing; run scripts/install-deps.sh" >&2
    exit 1
fi
if (($#)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -s none >&2
for t in "${targets[@]}"; do
    work=target/corpus/$t
    log=target/fuzz-$t.log
    mkdir -p "$work" "artifacts/$t"
    echo "fuzz/run.sh: $t for ${secs}s" >&2
    status=0
    cargo fuzz run -s none "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" | sed "s/^/  $t: /" >&2 || true
    if ((status != 0)) || compgen -G "artifacts/$t/*" >/dev/null; then
        tail -n 40 "$log" >&2
        echo "fuzz/run.sh: $t FAILED (status $status); inputs in fuzz/artifacts/$t/, log in fuzz/$log" >&2
        exit 1
    fi
done
echo "fuzz/run.sh: all targets ran without a crash" >&2
