#!/usr/bin/env bash
# Quick start, step 2: the whole test suite. Lints, unit tests, and
# end-to-end tests that boot real VMs (software emulation when no usable KVM).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*" >&2; }

# A CI run builds once: incremental state would only take disk (about half
# of target/). Free space is printed first, since a full disk fails a build
# far from its cause.
if [[ ${CI:-} == true ]]; then
    export CARGO_INCREMENTAL=0
fi
free_kib=$(df -Pk . | awk 'NR == 2 {print $4}')
log "Free disk space here: $((free_kib / 1024)) MiB (a cold run needs about 4 GiB: target/ 1.1 GiB, fuzz/ and the guest builds, the Debian image, the kernel build)"
if ((free_kib < 3 * 1024 * 1024)); then
    echo "warning: less than 3 GiB free on $(df -P . | awk 'NR == 2 {print $6}'); the build may fail with ENOSPC" >&2
fi

log "Checking dependencies"
scripts/install-deps.sh

log "The install step repairs what an install removed (tests/scripts/install-deps-recovers.sh)"
if [[ $(id -u) -eq 0 ]]; then
    tests/scripts/install-deps-recovers.sh
else
    log "SKIPPED: it installs and removes packages, which needs root"
fi

log "Guest kernel"
VESSEL_KERNEL=$(guest/kernel/build.sh)

log "Guest kernel configuration against Debian's (guest/kernel/config-omitted.list)"
rc=0
mkdir -p build
guest/kernel/compare-config.py >build/compare-config.txt || rc=$?
if ((rc == 1)); then
    cat build/compare-config.txt >&2
    exit 1
elif ((rc != 0)); then
    echo "warning: could not compare with Debian's kernel configuration (see above); skipped" >&2
fi

log "Formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

log "Guest init and initramfs"
VESSEL_INITRD=$(scripts/build-guest.sh build/guest/initramfs.img)

log "Offline default image"
VESSEL_TEST_IMAGE=$(realpath "$(images/busybox/build.sh build/images/busybox.oci.tar | tail -n1)")

log "Kernel feature probe (static)"
VESSEL_PROBE=$(scripts/build-probe.sh)

log "Debian image for the real-software tests (debootstrap, a few minutes once, then cached)"
VESSEL_DEBIAN_IMAGE=$(tests/fixtures/debian-image.sh)

export VESSEL_KERNEL VESSEL_INITRD VESSEL_TEST_IMAGE VESSEL_PROBE VESSEL_DEBIAN_IMAGE
log "Tests (kernel $VESSEL_KERNEL; the API fuzzer, schemathesis from build/venv, is tests/tests/api_fuzz.rs)"
cargo build --workspace --bins --quiet
cargo test --workspace --no-fail-fast -- --test-threads="${VESSEL_TEST_THREADS:-2}"

log "Templates off: the run, process, interactive and network tests again, every VM booting its kernel (VESSEL_TEMPLATES=0)"
VESSEL_TEMPLATES=0 cargo test -p vessel-tests --no-fail-fast --test run --test process --test interactive \
    --test network -- --test-threads="${VESSEL_TEST_THREADS:-2}"

log "Fuzzing: each target ${FUZZ_SECONDS:-20} s from its seed corpus (fuzz/run.sh)"
fuzz/run.sh
