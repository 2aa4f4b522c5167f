#!/usr/bin/env bash
# Build the vessel guest kernel (PVH vmlinux, no modules) from Debian's
# linux-source-6.1 package and the config fragment next to this script.
#
# The result is cached under ${VESSEL_CACHE:-/var/cache/vessel}/kernel/<key>/vmlinux
# where <key> = sha256(fragment + linux-source package version + this script
# + the patches in patches/, applied in name order).
# Stdout: the path of vmlinux (last and only line). Everything else -> stderr
# or the build log.
#
# Env: VESSEL_CACHE   cache root (default /var/cache/vessel)
#      VESSEL_KERNEL_JOBS  parallel make jobs (default: nproc)
set -euo pipefail

log() { printf 'kernel/build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
FRAGMENT="$SCRIPT_DIR/vessel.config"
PATCHES=("$SCRIPT_DIR"/patches/*.patch)
[[ -e "${PATCHES[0]}" ]] || PATCHES=()
SRC_PKG=linux-source-6.1
SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
CACHE_ROOT="${VESSEL_CACHE:-/var/cache/vessel}"
JOBS="${VESSEL_KERNEL_JOBS:-$(nproc)}"

[[ -f "$FRAGMENT" ]] || die "config fragment not found: $FRAGMENT"
if [[ ! -f "$SRC_TARBALL" ]]; then
    die "$SRC_TARBALL not found; run: apt-get install $SRC_PKG"
fi
SRC_VERSION=$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null) ||
    die "package $SRC_PKG is not installed; run: apt-get install $SRC_PKG"
[[ -n "$SRC_VERSION" ]] || die "cannot determine version of $SRC_PKG; run: apt-get install $SRC_PKG"

KEY=$( { cat "$FRAGMENT"; printf '\n%s\n' "$SRC_VERSION"; cat "$SCRIPT"; cat "${PATCHES[@]}" /dev/null; } | sha256sum | cut -d' ' -f1)
KERNEL_DIR="$CACHE_ROOT/kernel"
OUT_DIR="$KERNEL_DIR/$KEY"
VMLINUX="$OUT_DIR/vmlinux"

if [[ -f "$VMLINUX" ]]; then
    log "cached: $VMLINUX"
    printf '%s\n' "$VMLINUX"
    exit 0
fi

for tool in make gcc flex bison bc xz tar patch; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "missing build tool '$tool'; run: apt-get install build-essential flex bison bc libelf-dev libssl-dev xz-utils"
done

mkdir -p "$OUT_DIR"
# Serialise concurrent builds of the same key.
exec 9>"$KERNEL_DIR/$KEY.lock"
flock 9
if [[ -f "$VMLINUX" ]]; then   # built by another process while we waited
    log "cached: $VMLINUX"
    printf '%s\n' "$VMLINUX"
    exit 0
fi

WORK="$KERNEL_DIR/work-$KEY"
BUILD_LOG="$OUT_DIR/build.log"
rm -rf "$WORK"
mkdir -p "$WORK"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
: >"$BUILD_LOG"

fail() {
    log "error: $*"
    log "last lines of $BUILD_LOG:"
    tail -n 40 "$BUILD_LOG" >&2 || true
    exit 1
}

start=$(date +%s)
log "building kernel $KEY ($SRC_PKG $SRC_VERSION, $JOBS jobs); log: $BUILD_LOG"
log "extracting $SRC_TARBALL"
tar -xJf "$SRC_TARBALL" -C "$WORK" --strip-components=1 >>"$BUILD_LOG" 2>&1 ||
    fail "extracting $SRC_TARBALL failed"

cd "$WORK"
for p in "${PATCHES[@]}"; do
    log "applying $(basename "$p")"
    patch -p1 --forward --quiet <"$p" >>"$BUILD_LOG" 2>&1 || fail "patch $p does not apply"
done
log "configuring (tinyconfig + fragment)"
{
    make tinyconfig &&
    scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" &&
    make olddefconfig
} >>"$BUILD_LOG" 2>&1 || fail "kernel configuration failed"

# Verify every CONFIG_X=y of the fragment survived; and every
# '# CONFIG_X is not set' is not enabled.
missing=()
while IFS= read -r line; do
    grep -qxF "$line" .config || missing+=("$line (got: $(grep -E "^(# )?${line%%=*}[= ]" .config || echo 'absent'))")
done < <(grep -E '^CONFIG_[A-Za-z0-9_]+=y$' "$FRAGMENT")
while IFS= read -r opt; do
    if grep -qE "^${opt}=[ym]$" .config; then missing+=("# $opt is not set (got: $(grep -E "^${opt}=" .config))"); fi
done < <(sed -nE 's/^# (CONFIG_[A-Za-z0-9_]+) is not set$/\1/p' "$FRAGMENT")
if ((${#missing[@]})); then
    cp .config "$OUT_DIR/config.rejected" || true
    log "error: options of $FRAGMENT not honoured in final .config (saved as $OUT_DIR/config.rejected):"
    printf '  %s\n' "${missing[@]}" >&2
    exit 1
fi
log "config verified ($(grep -cE '^CONFIG_[A-Za-z0-9_]+=y$' "$FRAGMENT") options)"

log "compiling vmlinux (this takes several minutes)"
make -j"$JOBS" vmlinux >>"$BUILD_LOG" 2>&1 || fail "make vmlinux failed"

cp .config "$OUT_DIR/config"
tmp="$OUT_DIR/vmlinux.tmp.$$"
cp vmlinux "$tmp"
sync "$tmp" 2>/dev/null || true
mv -f "$tmp" "$VMLINUX"
cd /
log "built $VMLINUX in $(( $(date +%s) - start ))s"
printf '%s\n' "$VMLINUX"
