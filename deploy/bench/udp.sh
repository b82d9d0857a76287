#!/usr/bin/env bash
# UDP egress benchmark: `network.egress.udp: relay` against `masquerade`, in
# one run, interleaved, on namespaces this script builds (guest ⇄ pod bridge
# ⇄ cluster over veth, MTU 1500, no VM):
#
#   masquerade   guest UDP forwarded by the kernel behind the pod's address
#   relay        guest UDP TPROXYed to `vmpod relay udp-egress` (the code of
#                `udp: relay`), which sends it from a pod socket
#
# Metrics, from the guest to a server in the cluster namespace:
#   throughput   iperf3 -u, 1400-byte datagrams, unlimited rate: Mbit/s the
#                server received, and the loss
#   latency      sockperf ping-pong, 64-byte request/response: p50 and p99 (µs)
#   cpu          CPU seconds of the relay process per GB received (0 for the
#                kernel path), and of the whole machine per GB (noisy when the
#                machine is shared)
# Prints medians side by side with the relay/masquerade ratio, and writes
# target/bench/udp.md.
#
#   sudo deploy/bench/udp.sh              # 3 repetitions, 10 s each: about 3 minutes
#   sudo deploy/bench/udp.sh --quick      # 1 repetition, 4 s each
#   VMPOD=target/debug/vmpod deploy/bench/udp.sh   # another binary (default: release build)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"

die() { echo "udp.sh: $*" >&2; exit 1; }

REPS=3 SECS=10
[ "${1:-}" = --quick ] && { REPS=1; SECS=4; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, nftables)"
for cmd in ip nft iperf3 sockperf python3; do
  command -v "$cmd" >/dev/null || die "$cmd is missing (apt-get install iperf3 sockperf nftables)"
done
if [ -z "${VMPOD:-}" ]; then
  cargo build --release --bin vmpod
  VMPOD=target/release/vmpod
fi
[ -x "$VMPOD" ] || die "$VMPOD is not executable"

G=ubench-guest P=ubench-pod C=ubench-cluster
PORT=9401 CLUSTER=10.89.0.1 POD=10.89.0.2
RELAY_PID=
cleanup() {
  [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null || true
  for ns in $G $P $C; do
    ip netns pids $ns 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del $ns 2>/dev/null || true
  done
}
trap cleanup EXIT
cleanup

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
for ns in $G $P $C; do ip netns add $ns; nsx $ns ip link set lo up; done
ip link add veth-g netns $G type veth peer name vguest netns $P
ip link add veth-c netns $C type veth peer name eth0 netns $P
nsx $P ip link add br0 type bridge
nsx $P ip link set vguest master br0
nsx $P ip addr add 10.0.1.1/24 dev br0
nsx $P ip addr add $POD/24 dev eth0
for l in br0 vguest eth0; do nsx $P ip link set $l up; done
nsx $P ip route add default via $CLUSTER
nsx $P sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.br0.rp_filter=0
nsx $P sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
nsx $G ip addr add 10.0.1.2/24 dev veth-g
nsx $G ip link set veth-g up
nsx $G ip route add default via 10.0.1.1
nsx $C ip addr add $CLUSTER/24 dev veth-c
nsx $C ip link set veth-c up
# The relay's policy route, as vmpod's tproxy mode installs it.
nsx $P ip rule add fwmark 0x4000/0x4000 lookup 4000
nsx $P ip route add local default dev lo table 4000

nsx $C iperf3 -s -D -B $CLUSTER
nsx $C sockperf server -i $CLUSTER -p 11111 >/dev/null 2>&1 &
sleep 1

rules() {
  local relay=$1
  {
    echo "table inet ubench {}"
    echo "delete table inet ubench"
    echo "table inet ubench {"
    if [ "$relay" = 1 ]; then
      echo " chain pre { type filter hook prerouting priority -140;"
      echo "  iifname \"br0\" ip saddr 10.0.1.0/24 meta l4proto udp fib daddr type unicast tproxy ip to :$PORT meta mark set meta mark | 0x4000 accept"
      echo " }"
    fi
    echo " chain post { type nat hook postrouting priority 100;"
    echo "  ip saddr 10.0.1.0/24 oifname != \"br0\" masquerade"
    echo " }"
    echo "}"
  } | nsx $P nft -f -
}

cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }          # utime+stime, ticks
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }     # user nice system irq softirq
HZ=$(getconf CLK_TCK)

# One measurement of `mode`: prints "mbps loss p50 p99 relay_cpu_per_gb machine_cpu_per_gb".
measure() {
  local mode=$1 relay_cpu0=0 relay_cpu1=0
  if [ "$mode" = relay ]; then
    rules 1
    ip netns exec $P "$VMPOD" relay udp-egress --listen 0.0.0.0:$PORT >/dev/null 2>&1 &
    RELAY_PID=$!
    sleep 0.5
    relay_cpu0=$(cpu_of $RELAY_PID)
  else
    rules 0
  fi
  local b0 b1 json lat
  b0=$(busy)
  json=$(nsx $G iperf3 -u -c $CLUSTER -b 0 -l 1400 -t "$SECS" -J)
  b1=$(busy)
  [ "$mode" = relay ] && relay_cpu1=$(cpu_of $RELAY_PID)
  lat=$(nsx $G sockperf ping-pong -i $CLUSTER -p 11111 -t "$SECS" -m 64 2>&1)
  if [ "$mode" = relay ]; then
    kill $RELAY_PID; wait $RELAY_PID 2>/dev/null || true; RELAY_PID=
  fi
  python3 - "$json" "$lat" "$relay_cpu0" "$relay_cpu1" "$b0" "$b1" "$HZ" <<'EOF'
import json, re, sys
j = json.loads(sys.argv[1]); lat = sys.argv[2]
rc0, rc1, b0, b1, hz = map(float, sys.argv[3:8])
s = j["end"]["sum"]
loss = s.get("lost_percent", 0.0)
rx_bps = s["bits_per_second"] * (1 - loss / 100)
gb = rx_bps * s["seconds"] / 8 / 1e9
pct = lambda p: float(re.search(r"percentile %s = +([0-9.]+)" % p, lat).group(1))
print(f"{rx_bps/1e6:.0f} {loss:.1f} {pct('50.000'):.1f} {pct('99.000'):.1f} "
      f"{(rc1-rc0)/hz/max(gb,1e-9):.2f} {(b1-b0)/hz/max(gb,1e-9):.2f}")
EOF
}

RESULTS=$(mktemp)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
for rep in $(seq "$REPS"); do
  for mode in masquerade relay; do
    echo "rep $rep: $mode" >&2
    echo "$mode $(measure $mode)" >>"$RESULTS"
  done
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)

mkdir -p target/bench
python3 - "$RESULTS" "$load0" "$load1" "$REPS" "$SECS" <<'EOF' | tee target/bench/udp.md
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = lambda mode, i: statistics.median(float(r[i]) for r in rows if r[0] == mode)
names = [("throughput Mbit/s (received)", 1, "higher"), ("loss %", 2, "lower"),
         ("latency p50 µs", 3, "lower"), ("latency p99 µs", 4, "lower"),
         ("relay CPU s/GB", 5, "lower"), ("machine CPU s/GB", 6, "lower")]
print(f"# UDP egress: relay vs masquerade ({sys.argv[4]} reps × {sys.argv[5]} s; load {sys.argv[2]} → {sys.argv[3]})\n")
print("| metric | masquerade | relay | relay / masquerade |")
print("| --- | ---: | ---: | ---: |")
for name, i, _ in names:
    m, r = med("masquerade", i), med("relay", i)
    ratio = f"{r / m:.2f}" if m else "-"
    print(f"| {name} | {m:g} | {r:g} | {ratio} |")
EOF
rm -f "$RESULTS"
