#!/usr/bin/env bash
# Build vessel's offline default image "localhost/busybox:latest" without
# docker, as an OCI image layout archive, from Debian's busybox-static.
# Deterministic: the same busybox binary gives the same digests.
#
# Usage: build.sh OUTPUT.tar     (prints OUTPUT.tar on stdout)
set -euo pipefail

log() { printf 'images/busybox/build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -eq 1 ]] || die "usage: $0 OUTPUT.tar"
OUTPUT=$1
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUSYBOX=${BUSYBOX:-/bin/busybox}

[[ -x "$BUSYBOX" ]] || die "$BUSYBOX not found; run: apt-get install busybox-static"
if command -v file >/dev/null 2>&1 && ! file -L "$BUSYBOX" | grep -q 'statically linked'; then
    die "$BUSYBOX is not statically linked; run: apt-get install busybox-static"
fi
command -v python3 >/dev/null 2>&1 || die "python3 is required"

umask 022
ROOT=$(mktemp -d "${TMPDIR:-/tmp}/vessel-busybox.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT

mkdir -p "$ROOT"/{bin,dev,etc,proc,sys,tmp,root,home/vessel,usr/bin,var}
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"
chmod 0755 "$ROOT/home/vessel"

cp -- "$BUSYBOX" "$ROOT/bin/busybox"
chmod 0755 "$ROOT/bin/busybox"
n=0
while IFS= read -r applet; do
    [[ -n "$applet" && "$applet" != busybox && "$applet" != */* ]] || continue
    ln -s busybox "$ROOT/bin/$applet"
    n=$((n + 1))
done < <("$BUSYBOX" --list | LC_ALL=C sort -u)
# Scripts commonly use #!/usr/bin/env.
ln -s ../../bin/busybox "$ROOT/usr/bin/env"

cat >"$ROOT/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
vessel:x:1000:1000:vessel:/home/vessel:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$ROOT/etc/group" <<'GROUP'
root:x:0:
vessel:x:1000:
nogroup:x:65534:
GROUP
echo busybox >"$ROOT/etc/hostname"
chmod 0644 "$ROOT"/etc/{passwd,group,hostname}

python3 "$SCRIPT_DIR/make_oci.py" "$ROOT" "$OUTPUT" \
    --name busybox --tag latest --user-home home/vessel:1000:1000
log "wrote $OUTPUT (busybox $("$BUSYBOX" 2>&1 | head -1 | awk '{print $2}'), $n applets)"
printf '%s\n' "$OUTPUT"
