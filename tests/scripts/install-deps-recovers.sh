#!/usr/bin/env bash
# scripts/install-deps.sh repairs what an install removed or broke.
#
# Reproduces, on this machine and with real packages, what happened on a
# fresh machine (qemu-utils 10 from backports, removed as a conflict when
# the install step installed qemu-system-x86 7.2, after the step had
# checked it):
#   1. a package the step must install (bc, removed here) and a dpkg hook
#      that removes qemu-utils the first time dpkg runs, i.e. *after* the
#      step's check: the step must notice and install qemu-utils again;
#   2. a package that is "installed" but whose command is gone (debugfs
#      deleted): the step must reinstall it, although dpkg says all is well;
#   3. a tool no package provides: the step must fail, naming the tool and
#      its package.
# Needs root and Debian's archive (it installs packages for real); leaves
# the machine as complete as it found it. VESSEL_DEPS_TEST_LOGS=DIR keeps
# the step's output of each case there.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf 'install-deps-recovers: %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

if [[ $(id -u) -ne 0 ]]; then
    log "needs root (it removes and reinstalls packages)"
    exit 1
fi
work=$(mktemp -d /tmp/vessel-deps-test.XXXXXX)
restore() {
    rm -f "$work/hook-armed"
    scripts/install-deps.sh >/dev/null 2>&1 || log "warning: the final repair failed; run scripts/install-deps.sh"
    if [[ -n $keep_logs ]]; then cp "$work"/*.log "$keep_logs"/ 2>/dev/null || true; fi
    rm -rf "$work"
}
trap restore EXIT
keep_logs=${VESSEL_DEPS_TEST_LOGS:-}

# The dpkg hook: removes qemu-utils once, after the first dpkg run of the step.
cat >"$work/hook.sh" <<HOOK
#!/bin/sh
[ -e "$work/hook-armed" ] || exit 0
rm -f "$work/hook-armed"
echo "hook: removing qemu-utils behind the install step's back" >&2
DPKG_FRONTEND_LOCKED=1 dpkg --remove --force-depends qemu-utils >&2 || rm -f /usr/bin/qemu-img
HOOK
chmod +x "$work/hook.sh"
cat >"$work/apt.conf" <<CONF
DPkg::Post-Invoke { "$work/hook.sh"; };
CONF

log "case 1: qemu-utils removed by the step's own install (after its check)"
command -v qemu-img >/dev/null || fail "qemu-img must run before the test"
dpkg --remove bc >/dev/null 2>&1 || fail "could not remove bc"
! command -v bc >/dev/null || fail "bc still there"
touch "$work/hook-armed"
if ! APT_CONFIG="$work/apt.conf" scripts/install-deps.sh 2>"$work/case1.log"; then
    cat "$work/case1.log" >&2
    fail "the install step did not recover"
fi
[[ ! -e "$work/hook-armed" ]] || fail "the hook never ran: the step installed nothing?"
grep -q "round 2: an install removed or broke: qemu-utils" "$work/case1.log" ||
    { cat "$work/case1.log" >&2; fail "the step did not notice that qemu-utils went away"; }
qemu-img --version >/dev/null || fail "qemu-img does not run after the step"
bc --version >/dev/null || fail "bc does not run after the step"
grep -qE '^  qemu-img +qemu-img version' "$work/case1.log" || fail "no version line for qemu-img"

log "case 2: e2fsprogs installed, but debugfs gone"
debugfs=$(command -v debugfs)
mv "$debugfs" "$work/debugfs.saved"
dpkg-query -W -f='${Status}' e2fsprogs | grep -q "install ok installed" || fail "dpkg lost e2fsprogs"
if ! scripts/install-deps.sh 2>"$work/case2.log"; then
    mv -n "$work/debugfs.saved" "$debugfs"
    cat "$work/case2.log" >&2
    fail "the install step did not reinstall e2fsprogs"
fi
[[ -x $debugfs ]] || fail "debugfs still missing"
debugfs -V >/dev/null 2>&1 || fail "debugfs does not run"
rm -f "$work/debugfs.saved"

log "case 3: a tool that nothing provides"
if VESSEL_DEPS_ROUNDS=1 VESSEL_DEPS_EXTRA="vessel-no-such-tool|vessel-no-such-package|--version" \
    scripts/install-deps.sh 2>"$work/case3.log"; then
    fail "the install step succeeded without vessel-no-such-tool"
fi
grep -q "vessel-no-such-tool.*MISSING.*package vessel-no-such-package" "$work/case3.log" ||
    { cat "$work/case3.log" >&2; fail "the failure does not name the tool and its package"; }

log "ok: 3 cases"
