#!/usr/bin/env bash
# Build the vessel guest initramfs: a gzip'd newc cpio archive holding
#   /init  (VMINITD_BINARY, mode 0755)
#   /dev /proc /sys /run /mnt /tmp  (empty dirs; /tmp is 1777)
#   /dev/console (char 5:1)  -- so PID 1 gets stdin/stdout/stderr from the
#                               kernel before it mounts devtmpfs itself.
# Reproducible (sorted entries, fixed mtimes, owner 0:0, renumbered inodes)
# and needs no root: the device node is written as a raw newc entry.
#
# Usage: build.sh VMINITD_BINARY OUTPUT
set -euo pipefail

log() { printf 'initramfs/build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -eq 2 ]] || die "usage: $0 VMINITD_BINARY OUTPUT"
INIT_BIN=$1
OUTPUT=$2
[[ -f "$INIT_BIN" ]] || die "init binary not found: $INIT_BIN"
for tool in cpio gzip; do
    command -v "$tool" >/dev/null 2>&1 || die "missing '$tool'; run: apt-get install cpio gzip"
done
if command -v file >/dev/null 2>&1 && file -L "$INIT_BIN" | grep -q 'dynamically linked'; then
    log "warning: $INIT_BIN is dynamically linked; the initramfs has no libc, it will not run"
fi

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/vessel-initramfs.XXXXXX")
OUT_DIR=$(dirname -- "$OUTPUT")
mkdir -p "$OUT_DIR"
TMP_OUT=$(mktemp "$OUT_DIR/.$(basename -- "$OUTPUT").XXXXXX")
trap 'rm -rf "$STAGE" "$TMP_OUT"' EXIT

mkdir -p "$STAGE"/{dev,proc,sys,run,mnt,tmp}
chmod 0755 "$STAGE" "$STAGE"/{dev,proc,sys,run,mnt}
chmod 1777 "$STAGE/tmp"
cp -- "$INIT_BIN" "$STAGE/init"
chmod 0755 "$STAGE/init"
find "$STAGE" -exec touch -h -d @0 {} +

# One newc entry: name mode(octal) devmajor devminor; no data, mtime 0, 0:0.
newc_entry() {
    local name=$1 mode=$2 rmaj=$3 rmin=$4 ino=$5
    local namesize=$(( ${#name} + 1 ))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        "$ino" "$((8#$mode))" 0 0 1 0 0 0 0 "$rmaj" "$rmin" "$namesize" 0
    printf '%s\0' "$name"
    # header (110 bytes) + name padded to a multiple of 4
    local pad=$(( (4 - (110 + namesize) % 4) % 4 ))
    head -c "$pad" /dev/zero
}

{
    # Archive 1: the staged tree, sorted for reproducibility.
    (cd "$STAGE" && find . -mindepth 1 -printf '%P\0' | LC_ALL=C sort -z |
        cpio --quiet -o -H newc --null -R 0:0 --reproducible)
    # Archive 2 (the kernel unpacks concatenated archives): /dev/console.
    newc_entry dev/console 20600 5 1 100000
    newc_entry TRAILER!!! 0 0 0 0
} | gzip -n -9 >"$TMP_OUT"

chmod 0644 "$TMP_OUT"
mv -f "$TMP_OUT" "$OUTPUT"
trap 'rm -rf "$STAGE"' EXIT
log "wrote $OUTPUT ($(stat -c %s "$OUTPUT") bytes)"
printf '%s\n' "$OUTPUT"
