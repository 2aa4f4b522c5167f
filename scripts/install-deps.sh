#!/usr/bin/env bash
# Install what vessel needs on Debian 12 and prove that it runs.
#
# The unit of checking is the *command* vessel (or its tests and builds)
# executes, not the package status: a machine may come with a package from
# elsewhere (qemu-utils 10 from backports, say) that a later install removes
# as a conflict. So this script
#   1. runs every required tool (its version command) and collects the
#      package of each one that does not run;
#   2. installs (or reinstalls, or moves back to the version Debian's
#      archive has) those packages;
#   3. checks *every* tool again, since an install can remove what was
#      there before, and repeats (a few rounds at most);
#   4. prints each tool's version, or fails naming each tool that still does
#      not run and the package that provides it.
# A second run on a complete machine only checks (no apt, no network).
#
# Env: VESSEL_DEPS_EXTRA   more "command|package|version-args" entries, one
#                          per line (tests use it to ask for a tool no
#                          package provides)
#      VESSEL_DEPS_ROUNDS  repair rounds before giving up (default 4)
#      APT_CONFIG          passed to apt-get as usual
set -euo pipefail

log() { printf 'install-deps: %s\n' "$*" >&2; }

# command|package|arguments that print its version (and exit 0)
# A command given as an absolute path is checked at that path; a package
# given as "cargo:CRATE" is installed with `cargo install --locked`, and
# "cargo:CRATE@VERSION" installs that version, which the version output
# must then show (a different one is installed over).
TOOLS=(
    # the VMM and its disks
    "qemu-system-x86_64|qemu-system-x86|--version"
    "qemu-img|qemu-utils|--version"
    # bind mounts and shared volumes: one virtiofsd per shared directory
    # (rust-vmm's; it builds against libseccomp and libcap-ng, see FILES)
    "virtiofsd|cargo:virtiofsd@1.14.0|--version"
    # ext4 root filesystems
    "mkfs.ext4|e2fsprogs|-V"
    "debugfs|e2fsprogs|-V"
    "e2fsck|e2fsprogs|-V"
    # networking
    "nft|nftables|--version"
    "passt|passt|--version"
    "ip|iproute2|-V"
    # guest image and initramfs
    "/bin/busybox|busybox-static|--help"
    "cpio|cpio|--version"
    "gzip|gzip|--version"
    "python3|python3|--version"
    # kernel build
    "make|make|--version"
    "gcc|gcc|--version"
    "flex|flex|--version"
    "bison|bison|--version"
    "bc|bc|--version"
    "xz|xz-utils|--version"
    "perl|perl|--version"
    # test peers and their helpers
    "skopeo|skopeo|--version"
    "docker-registry|docker-registry|--version"
    "podman|podman|--version"
    "runc|runc|--version"
    # containerd and ctr for tests/tests/containerd.rs (the tests start
    # their own containerd; the package's system service is not used)
    "containerd|containerd|--version"
    "ctr|containerd|--version"
    # the reference CNI plugins: tests/tests/containerd.rs runs `bridge`
    # (with `host-local` IPAM) to give a task's network namespace an
    # interface, as CRI does for a pod
    "/usr/lib/cni/bridge|containernetworking-plugins|--version"
    "/usr/lib/cni/host-local|containernetworking-plugins|--version"
    # containerd's CRI plugin (tests/tests/cri.rs) also sets up each pod's lo
    "/usr/lib/cni/loopback|containernetworking-plugins|--version"
    # the CRI v1 client of tests/tests/cri.rs: the k8s-cri crate's build
    # generates it from the .proto files with protoc
    "protoc|protobuf-compiler|--version"
    "debootstrap|debootstrap|--version"
    "htpasswd|apache2-utils|-nb probe probe"
    "openssl|openssl|version"
    "curl|curl|--version"
    "runuser|util-linux|--version"
    "flock|util-linux|--version"
    "tmux|tmux|-V"
    # `vessel system install`'s units are checked with systemd-analyze, and
    # socket activation is tested with systemd-socket-activate (neither
    # needs systemd to be PID 1)
    "systemd-analyze|systemd|--version"
    "systemd-socket-activate|systemd|--version"
    "cargo-fuzz|cargo:cargo-fuzz|--version"
)
# The API fuzzer (schemathesis, from PyPI, pinned) lives in a venv under
# build/ of this checkout; `python3 -m venv` needs Debian's python3-venv.
SCHEMATHESIS_VERSION=4.32.5
# Files the kernel build reads: path|package
FILES=(
    "/usr/src/linux-source-6.1.tar.xz|linux-source-6.1"
    "/usr/include/libelf.h|libelf-dev"
    "/usr/include/openssl/ssl.h|libssl-dev"
    "/usr/include/stdio.h|libc6-dev"
    # what `cargo install virtiofsd` links against
    "/usr/include/seccomp.h|libseccomp-dev"
    "/usr/include/cap-ng.h|libcap-ng-dev"
)
if [[ -n ${VESSEL_DEPS_EXTRA:-} ]]; then
    while IFS= read -r line; do
        [[ -n $line ]] && TOOLS+=("$line")
    done <<<"$VESSEL_DEPS_EXTRA"
fi

# Does the tool run? Prints the first line of its version output.
tool_version() {
    local cmd=$1 args=$2 out
    if [[ $cmd == /* ]]; then
        [[ -x $cmd ]] || return 1
    else
        command -v "$cmd" >/dev/null 2>&1 || return 1
    fi
    # shellcheck disable=SC2086 # version arguments are words
    out=$(timeout 20 "$cmd" $args 2>&1 </dev/null) || return 1
    out=$(printf '%s\n' "$out" | grep -m1 -v '^[[:space:]]*$' || true)
    # A pinned crate ("cargo:CRATE@VERSION"): another version is not it.
    if [[ ${3:-} == cargo:*@* ]]; then
        local want=${3##*@}
        [[ " $out " == *" $want "* || " $out " == *" v$want "* ]] || return 1
    fi
    printf '%s\n' "${out:-ok}"
}

# The packages whose tools or files are missing, one per line (deduplicated).
broken_packages() {
    local entry cmd pkg args
    for entry in "${TOOLS[@]}"; do
        IFS='|' read -r cmd pkg args <<<"$entry"
        tool_version "$cmd" "$args" "$pkg" >/dev/null || echo "$pkg"
    done
    for entry in "${FILES[@]}"; do
        IFS='|' read -r cmd pkg <<<"$entry"
        [[ -e $cmd ]] || echo "$pkg"
    done | cat
}

cargo_root() {
    if [[ $(id -u) -eq 0 ]]; then echo /usr/local; else echo "$HOME/.cargo"; fi
}

apt_updated=
apt_install() {
    # Every package is asked for at the newest version Debian's archive has
    # (what `apt-cache madison` lists, never a locally installed build), so
    # a package from elsewhere that broke is moved back, and a package whose
    # files went missing is reinstalled.
    local pkgs=() p ver
    if [[ -z $apt_updated ]]; then
        log "apt-get update"
        apt-get update -qq >&2
        apt_updated=1
    fi
    for p in "$@"; do
        ver=$(apt-cache madison "$p" 2>/dev/null | awk -F'|' 'NR==1 {gsub(/ /, "", $2); print $2}')
        if [[ -n $ver ]]; then pkgs+=("$p=$ver"); else pkgs+=("$p"); fi
    done
    log "installing: ${pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        --reinstall --allow-downgrades "${pkgs[@]}" >&2
}

rounds=${VESSEL_DEPS_ROUNDS:-4}
round=0
while :; do
    mapfile -t broken < <(broken_packages | awk '!seen[$0]++')
    ((${#broken[@]})) || break
    round=$((round + 1))
    if ((round > rounds)); then
        break
    fi
    if ((round > 1)); then
        log "round $round: an install removed or broke: ${broken[*]}"
    fi
    apt_pkgs=()
    cargo_pkgs=()
    for p in "${broken[@]}"; do
        case $p in
        cargo:*) cargo_pkgs+=("${p#cargo:}") ;;
        *) apt_pkgs+=("$p") ;;
        esac
    done
    if [[ $(id -u) -ne 0 && ${#apt_pkgs[@]} -gt 0 ]]; then
        log "missing packages: ${apt_pkgs[*]}; run this script as root (or: sudo apt-get install ${apt_pkgs[*]})"
        exit 1
    fi
    if ((${#apt_pkgs[@]})); then
        apt_install "${apt_pkgs[@]}" || log "apt-get install failed (checked again below)"
    fi
    for c in "${cargo_pkgs[@]}"; do
        log "installing $c (cargo install --locked, about a minute)"
        cargo install --locked --quiet --force "$c" --root "$(cargo_root)" >&2 ||
            log "cargo install $c failed (checked again below)"
    done
done

# The report: every tool's version, or what is missing and where it comes from.
failed=0
for entry in "${TOOLS[@]}"; do
    IFS='|' read -r cmd pkg args <<<"$entry"
    if v=$(tool_version "$cmd" "$args" "$pkg"); then
        # Tools that print no version number: show the package's.
        if ! grep -qE '[0-9]+\.[0-9]+' <<<"$v" && [[ $pkg != cargo:* ]]; then
            v="$pkg $(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || echo '?')"
        fi
        printf '  %-22s %s\n' "$cmd" "$v" >&2
    else
        printf '  %-22s MISSING: does not run, or not the version asked for (package %s)\n' "$cmd" "${pkg#cargo:}" >&2
        failed=1
    fi
done
for entry in "${FILES[@]}"; do
    IFS='|' read -r cmd pkg <<<"$entry"
    if [[ -e $cmd ]]; then
        printf '  %-22s %s\n' "$(basename "$cmd")" "$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || echo present)" >&2
    else
        printf '  %-22s MISSING: %s (package %s)\n' "$(basename "$cmd")" "$cmd" "$pkg" >&2
        failed=1
    fi
done
if ((failed)); then
    log "error: the tools marked MISSING above still do not run; install their packages and run this again"
    exit 1
fi

# The API fuzzer: a venv of its own, reused while it has the pinned version.
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=$repo/build/venv
if [[ $("$venv/bin/schemathesis" --version 2>/dev/null) != *"$SCHEMATHESIS_VERSION"* ]]; then
    if ! python3 -c 'import ensurepip' 2>/dev/null; then
        if [[ $(id -u) -ne 0 ]]; then
            log "missing python3-venv (for the API fuzzer); run this script as root (or: sudo apt-get install python3-venv)"
            exit 1
        fi
        apt_install python3-venv || true
    fi
    log "installing schemathesis $SCHEMATHESIS_VERSION into $venv (the API fuzzer)"
    rm -rf "$venv"
    python3 -m venv "$venv" && "$venv/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION" >&2 || {
        log "error: could not install schemathesis $SCHEMATHESIS_VERSION into $venv (from PyPI): the API fuzz test needs it"
        exit 1
    }
fi
printf '  %-22s %s\n' "schemathesis" "$("$venv/bin/schemathesis" --version)" >&2
log "dependencies present"
