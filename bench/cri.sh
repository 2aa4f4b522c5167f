#!/usr/bin/env bash
# Pod start through containerd's CRI (RunPodSandbox + CreateContainer +
# StartContainer of one container), vessel's runtime handler against runc's
# in one containerd, run by run in turn (tests/tests/cri.rs,
# pod_start_vessel_against_runc). Prints p50 and mean of each and the ratio.
#
#   bench/cri.sh [RUNS]      default 5
#
# Needs what scripts/test.sh sets up (kernel, initramfs, test image,
# containerd, runc, the CNI plugins). A release build.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
VESSEL_KERNEL=$(guest/kernel/build.sh)
VESSEL_INITRD=$(scripts/build-guest.sh build/guest/initramfs.img)
VESSEL_TEST_IMAGE=$(realpath "$(images/busybox/build.sh build/images/busybox.oci.tar | tail -n1)")
export VESSEL_KERNEL VESSEL_INITRD VESSEL_TEST_IMAGE
cargo build --release --workspace --bins --quiet
VESSEL_CRI_RUNS=$runs cargo test --release --quiet -p vessel-tests --test cri -- \
    --ignored --exact pod_start_vessel_against_runc --nocapture 2>&1 |
    grep -E "pod start|vessel|runc|test result|panicked"
