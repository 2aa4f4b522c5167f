#!/usr/bin/env bash
# Install what vessel needs on Debian 12: QEMU, the vsock backend, the tools
# that build the guest kernel and images, and the test peers (skopeo, a
# registry). Idempotent: a second run only checks.
set -euo pipefail

log() { printf 'install-deps: %s\n' "$*" >&2; }

PACKAGES=(
    qemu-system-x86 qemu-utils e2fsprogs busybox-static skopeo docker-registry
    linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils
    python3 iproute2 procps nftables passt
    apache2-utils openssl curl
)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        log "missing packages: ${missing[*]}; run this script as root (or: sudo apt-get install ${missing[*]})"
        exit 1
    fi
    log "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if ! command -v vhost-device-vsock >/dev/null 2>&1; then
    log "installing vhost-device-vsock (cargo install, about a minute)"
    root=/usr/local
    [[ $(id -u) -eq 0 ]] || root="$HOME/.cargo"
    cargo install --locked --quiet vhost-device-vsock --root "$root" >&2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz (cargo install, about a minute)"
    root=/usr/local
    [[ $(id -u) -eq 0 ]] || root="$HOME/.cargo"
    cargo install --locked --quiet cargo-fuzz --root "$root" >&2
fi
log "dependencies present"
