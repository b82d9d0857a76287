#!/usr/bin/env bash
# Relay benchmark: vmpod's relays side by side with the kernel path, haproxy
# and socat, on namespaces it builds itself (guest ⇄ pod bridge ⇄ cluster over
# veth, MTU 1500, no VM). One run measures every competitor interleaved:
#
#   kernel-egress    guest → cluster, kernel forwarding + masquerade
#   vmpod-tproxy     guest → cluster through `vmpod relay egress --mode tproxy`
#   vmpod-accel      the same as vmpod-tproxy with `--accel auto` (eBPF sockmap)
#   vmpod-redirect   guest → cluster through `vmpod relay egress --mode redirect`
#   kernel-ingress   cluster → pod address → guest, kernel DNAT
#   vmpod-ingress    cluster → pod address → guest through `vmpod relay ingress`
#   vmpod-accel-ingress  the same with `--accel auto`
#   haproxy          the same through haproxy (mode tcp)
#   haproxy-splice   the same with `option splice-auto`
#   socat            the same through socat (fork)
#
# Metrics: iperf3 throughput (1 and 4 streams, both directions), request/response
# latency p50/p99/p99.9 (64 B, 1 KiB), new connections per second (connect, one
# request, close), memory per idle connection (PSS delta of a fresh relay over
# 10,000 idle connections), CPU seconds of the relay process per GB relayed.
# Writes target/bench/relay.md and target/bench/relay.json, and prints the table.
#
#   sudo deploy/bench/relay.sh            # full run: 5 repetitions, about 15-20 minutes
#   sudo deploy/bench/relay.sh --quick    # 1 repetition, short durations, about 2 minutes
#
# Other options (passed to the harness, benches/relay/): --reps N,
# --only KEY,KEY (the kernel and haproxy references are always kept),
# --measure tput,latency,cps,memory, --out DIR.
# The machine should be quiet: other load skews the figures (the report records
# the load average before and after).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"

die() { echo "relay.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (network namespaces, nftables)"
for cmd in ip nft ss iperf3 haproxy socat pasta dnsperf cargo; do
  command -v "$cmd" >/dev/null || die "$cmd is missing; run deploy/local/install-deps.sh"
done

cargo build --release --bin vmpod
# target/bench unless the caller names --out (the harness takes it once).
out=(--out target/bench)
for a in "$@"; do
  case "$a" in --out | --out=*) out=() ;; esac
done
exec cargo bench --bench relay -- --vmpod target/release/vmpod "${out[@]}" "$@"
