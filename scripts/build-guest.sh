#!/usr/bin/env bash
# Build vminitd as a static binary and pack it into the guest initramfs.
# Prints the initramfs path. Usage: scripts/build-guest.sh [OUTPUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/guest/initramfs.img}
mkdir -p "$(dirname "$out")"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release -p vminitd \
    --target x86_64-unknown-linux-gnu --target-dir target/guest >&2
bin=target/guest/x86_64-unknown-linux-gnu/release/vminitd
if ldd "$bin" >/dev/null 2>&1 && ! ldd "$bin" 2>&1 | grep -q "statically linked"; then
    echo "build-guest: $bin is not static" >&2
    exit 1
fi
guest/initramfs/build.sh "$bin" "$out" >&2
realpath "$out"
