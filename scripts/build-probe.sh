#!/usr/bin/env bash
# Build vessel-probe (crates/guest-probe) as a static binary, the way
# scripts/build-guest.sh builds vminitd, so it runs in any container image.
# Prints the binary's path. Usage: scripts/build-probe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release -p vessel-probe \
    --target x86_64-unknown-linux-gnu --target-dir target/guest >&2
bin=target/guest/x86_64-unknown-linux-gnu/release/vessel-probe
if ldd "$bin" >/dev/null 2>&1 && ! ldd "$bin" 2>&1 | grep -q "statically linked"; then
    echo "build-probe: $bin is not static" >&2
    exit 1
fi
realpath "$bin"
