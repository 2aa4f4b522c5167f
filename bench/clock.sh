#!/usr/bin/env bash
# Soak of the guest's clock: the end-to-end clock test with a longer busy
# run (CI runs it for 100 s). Prints the worst distance between the host's
# clock and the guest's, and the guest's clocksource.
#
#   bench/clock.sh [SECONDS]      default 1800
#
# Needs what scripts/test.sh sets up (kernel, initramfs, test image).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-1800}
VESSEL_KERNEL=$(guest/kernel/build.sh)
VESSEL_INITRD=$(scripts/build-guest.sh build/guest/initramfs.img)
VESSEL_TEST_IMAGE=$(realpath "$(images/busybox/build.sh build/images/busybox.oci.tar | tail -n1)")
export VESSEL_KERNEL VESSEL_INITRD VESSEL_TEST_IMAGE
cargo build --workspace --bins --quiet
VESSEL_CLOCK_SECS=$secs cargo test --quiet -p vessel-tests --test clock -- \
    a_busy_guest_stays_in_step --nocapture 2>&1 | grep -E "samples;|clocksource|test result|panicked"
