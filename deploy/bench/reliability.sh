#!/usr/bin/env bash
# Reliability scorecard (issue 16): vmpod as PID 1 of a pod sandbox
# (deploy/local/pod-sandbox.sh) with the test guest, attacked and broken on
# purpose. One sandbox, one guest, checks in this order:
#
#   guest as attacker  the real guest fetches every pod-local TCP port
#                      listening, on the gateway and the pod IP, and the
#                      metadata address 169.254.169.254 (its /cgi-bin/fetch);
#                      a namespace on the bridge (a second guest) sends UDP
#                      to every pod-local UDP port; each with its expected
#                      result (network.guest_access, network.egress.deny)
#   slowloris          connections that send a byte a second (reconnecting
#                      when cut) on every TCP port vmpod listens on, while
#                      /healthz and /readyz are probed as the kubelet does
#                      (1 s timeout): every probe must be answered 200
#   10,000 connections held through the egress relay from the bridged
#                      namespace to an echo server in the cluster; a storm
#                      past max_connections (refused with a RST: latency),
#                      held connections still exchanging; after close,
#                      vmpod's fds and RSS back to baseline
#   half-open peers    the bridged namespace's connections vanish (every
#                      packet dropped, no FIN): time until keepalive frees them
#   removals           nft flush ruleset, ip rule flush, bridge down, bridge
#                      address removed, bridge MTU changed, ip_forward=0,
#                      route deleted, tap deleted: time to the `repaired ...`
#                      warn line, vmpod_repairs_total{piece}, ingress again
#   kills              kill -9 of libvirtd, virtlogd and qemu, ×10 each
#                      (×3 with --quick), the guest's state checked after each
#   fuzz               the config, DHCP, DHCPv6, RA, DNS and resolv.conf
#                      parsers' fuzz tests (cargo test) for 60 s each (10 s
#                      with --quick), with the seed printed: 0 panics
#
# Prints one Markdown table (test | result | figure | pass/fail), also
# written to target/bench/reliability.md; logs (vmpod's, the config, the
# fuzz output) in target/bench/reliability-logs/. Exits 1 if any line fails.
#
#   sudo deploy/bench/reliability.sh           # full run: about 15 minutes
#   sudo deploy/bench/reliability.sh --quick   # about 4 minutes
#
# Environment:
#   TOTAL_TIMEOUT      watchdog for the checks (default 2400 s, 900 with
#                      --quick); the table is printed with what ran
#   VMPOD_BIN          the vmpod to run (default: target/release/vmpod, built first)
#   VMPOD_GUEST_IMAGES the test guest (default: <repo>/target/test-guest, built first)
#
# It boots a qemu guest: on a shared 2-core machine, run it alone. It holds
# one of the test suite's VM slots (tests/support/guest.rs) while it runs.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"

die() { echo "reliability.sh: $*" >&2; exit 1; }
log() { echo "reliability.sh: $*" >&2; }

QUICK=()
case "${1:-}" in
  --quick) QUICK=(--quick) ;;
  '') ;;
  *) die "usage: reliability.sh [--quick]" ;;
esac
if [ ${#QUICK[@]} -gt 0 ]; then TOTAL_TIMEOUT=${TOTAL_TIMEOUT:-900}; else TOTAL_TIMEOUT=${TOTAL_TIMEOUT:-2400}; fi

[ "$(id -u)" = 0 ] || die "needs root (network namespaces, nftables, libvirt)"
for cmd in ip nft ss curl nsenter unshare flock timeout python3 virsh virtlogd libvirtd \
  qemu-system-x86_64 cargo; do
  command -v "$cmd" >/dev/null || die "$cmd is missing; run deploy/local/install-deps.sh"
done

if [ -n "${VMPOD_BIN:-}" ]; then
  VMPOD=$VMPOD_BIN
else
  log "cargo build --release"
  cargo build --release --quiet --bin vmpod
  VMPOD=$REPO/target/release/vmpod
fi
[ -x "$VMPOD" ] || die "no vmpod binary at $VMPOD"
# The fuzz tests run last, from cargo test: build them now, so that the
# compiler does not share the machine with the guest later.
log "cargo test --lib --no-run"
cargo test --quiet --lib --no-run
export VMPOD_GUEST_IMAGES=${VMPOD_GUEST_IMAGES:-$REPO/target/test-guest}
images/test-guest/build.sh "$VMPOD_GUEST_IMAGES" >/dev/null

# 10,000 relayed connections take 20,000 of vmpod's fds, and the client and
# server as many: the hard limit is raised for this run when it is lower
# (needs CAP_SYS_RESOURCE). Where it cannot be, the driver holds as many
# connections as fit and sets max_connections to that (the table says so).
# The soft limit stays as it was: vmpod raises its own to the hard one.
HARD0=$(ulimit -Hn)
WANT=40000
if [ "$HARD0" = unlimited ] || [ "$HARD0" -ge "$WANT" ]; then
  NOFILE="hard nofile $HARD0"
elif ulimit -Hn "$WANT" 2>/dev/null; then
  NOFILE="hard nofile raised from $HARD0 to $WANT for the run"
else
  NOFILE="hard nofile $HARD0 (cannot be raised here: no CAP_SYS_RESOURCE)"
fi
log "$NOFILE"

# One of the test suite's machine-wide VM slots, so that tests started
# meanwhile boot one guest fewer.
exec 8>"${TMPDIR:-/tmp}/vmpod-test-vm-slot-0.lock"
flock -w 600 8 || die "the test VM slot 0 stayed taken for 600 s"

mkdir -p target/bench
# The watchdog: SIGTERM ends the checks (the driver tears the sandbox down
# and prints the table so far), SIGKILL 60 s later if it does not.
rc=0
timeout --kill-after=60 "$TOTAL_TIMEOUT" python3 deploy/bench/reliability.py "${QUICK[@]}" \
  --vmpod "$VMPOD" --repo "$REPO" --out "$REPO/target/bench" --nofile "$NOFILE" || rc=$?
[ "$rc" = 0 ] || exit 1
