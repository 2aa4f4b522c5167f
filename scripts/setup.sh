#!/usr/bin/env bash
# Quick start, step 1: install everything vessel needs, build it, install it
# under /usr/local, start the system, and run a container from the offline
# default image. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*" >&2; }

log "Installing dependencies"
scripts/install-deps.sh

log "Building the guest kernel (cached after the first build)"
kernel=$(guest/kernel/build.sh)

log "Building vessel (release)"
cargo build --release --quiet --bins
initrd=$(scripts/build-guest.sh build/guest/initramfs.img)

log "Building the offline default image"
image=$(realpath "$(images/busybox/build.sh build/images/busybox.oci.tar | tail -n1)")

prefix=${PREFIX:-/usr/local}
log "Installing into $prefix"
install -d "$prefix/bin" "$prefix/share/vessel"
for b in vessel vessel-apiserver vessel-images vessel-network vessel-runtime containerd-shim-vessel-v2; do
    install -m 0755 "target/release/$b" "$prefix/bin/$b.new"
    mv -f "$prefix/bin/$b.new" "$prefix/bin/$b"
done
install -m 0644 "$kernel" "$prefix/share/vessel/vmlinux"
install -m 0644 "$initrd" "$prefix/share/vessel/initramfs.img"
install -m 0644 "$image" "$prefix/share/vessel/busybox.oci.tar"

log "Starting vessel"
# A running apiserver from an earlier install keeps old binaries: restart it.
"$prefix/bin/vessel" system stop >/dev/null 2>&1 || true
"$prefix/bin/vessel" system start
"$prefix/bin/vessel" image load -i "$prefix/share/vessel/busybox.oci.tar"

log "Running a container in its own VM"
"$prefix/bin/vessel" run --rm localhost/busybox:latest \
    sh -c 'echo "hello from a vessel VM: kernel $(uname -r), up $(cut -d" " -f1 /proc/uptime) s, $(nproc) CPU"'
