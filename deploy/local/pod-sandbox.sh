#!/usr/bin/env bash
# A "pod" built the way a container runtime builds one, for local runs and tests.
#
#   pod-sandbox.sh create NAME [--dual-stack]
#                                       network namespaces NAME-pod and NAME-cl, joined by a veth;
#                                       --dual-stack gives both IPv6 too (a dual-stack cluster)
#   pod-sandbox.sh exec NAME STATE CMD  run CMD as PID 1 of a new pid + mount namespace inside
#                                       NAME-pod, with private /run, /etc/libvirt, /var/lib/libvirt,
#                                       /var/log/libvirt, /etc/sasl2 kept under directory STATE
#   pod-sandbox.sh destroy NAME         remove both namespaces (their links go with them)
#
# Addresses (the same in every sandbox: each has its own namespaces):
#   pod eth0     10.89.0.2/24, default route via 10.89.0.1
#   cluster      10.89.0.1/24 (upstream servers and test clients live here; also the
#                pod's resolver in /etc/resolv.conf inside the sandbox)
# With --dual-stack, also:
#   pod eth0     fd89::2/64, default route via fd89::1
#   cluster      fd89::1/64
# VMPOD_GUEST_IMAGES (default <repo>/target/test-guest) is mounted read-only at
# /var/lib/vmpod/images/test-guest, where the example config expects the test guest.
set -euo pipefail

POD_IP=10.89.0.2
CLUSTER_IP=10.89.0.1
PREFIX=24
POD_IP6=fd89::2
CLUSTER_IP6=fd89::1

die() { echo "pod-sandbox: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 is missing (install package $2)"; }

create() {
  local name=$1 dual=${2:-} pod=$1-pod cl=$1-cl
  [ "$(id -u)" = 0 ] || die "needs root to create network namespaces"
  need ip iproute2
  ip netns add "$pod"
  ip netns add "$cl" || { ip netns del "$pod"; die "cannot create $cl"; }
  ip link add eth0 netns "$pod" type veth peer name eth0 netns "$cl"
  ip -n "$pod" link set lo up
  ip -n "$cl" link set lo up
  ip -n "$pod" addr add "$POD_IP/$PREFIX" dev eth0
  ip -n "$cl" addr add "$CLUSTER_IP/$PREFIX" dev eth0
  ip -n "$pod" link set eth0 up
  ip -n "$cl" link set eth0 up
  ip -n "$pod" route add default via "$CLUSTER_IP"
  if [ "$dual" = --dual-stack ]; then
    # nodad: usable at once, as a CNI's addresses are.
    ip netns exec "$pod" sysctl -qw net.ipv6.conf.eth0.disable_ipv6=0
    ip netns exec "$cl" sysctl -qw net.ipv6.conf.eth0.disable_ipv6=0
    ip -n "$pod" addr add "$POD_IP6/64" dev eth0 nodad
    ip -n "$cl" addr add "$CLUSTER_IP6/64" dev eth0 nodad
    ip -n "$pod" -6 route add default via "$CLUSTER_IP6" dev eth0
  fi
}

destroy() {
  local name=$1 rc=0
  for ns in "$name-pod" "$name-cl"; do
    if ip netns list | grep -qw "^$ns"; then
      # Anything still running in the namespace would keep it alive.
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$ns" || rc=1
    fi
  done
  return $rc
}

# Runs inside the new mount + pid namespaces, as PID 1 until it execs CMD.
inner() {
  local state=$1; shift
  mount --make-rprivate /
  mkdir -p "$state"/{run,etc-libvirt,lib-libvirt,log-libvirt,sasl2}
  # A private copy of the machine's libvirt config, so vmpod may rewrite it
  # and domain definitions never land in the machine's /etc/libvirt.
  if [ -z "$(ls -A "$state/etc-libvirt")" ] && [ -d /etc/libvirt ]; then
    cp -a /etc/libvirt/. "$state/etc-libvirt/"
    rm -f "$state"/etc-libvirt/qemu/*.xml "$state"/etc-libvirt/qemu/autostart/*.xml
  fi
  mount --bind "$state/run" /run
  mount --bind "$state/etc-libvirt" /etc/libvirt
  mount --bind "$state/lib-libvirt" /var/lib/libvirt
  mkdir -p /var/log/libvirt && mount --bind "$state/log-libvirt" /var/log/libvirt
  mkdir -p /etc/sasl2 && mount --bind "$state/sasl2" /etc/sasl2
  # The resolver a kubelet gives a pod: the cluster's DNS (here the cluster
  # namespace, where a test may run a server) and the search list of the
  # pod's namespace. The guest's forwarded DNS never leaves the sandbox.
  printf 'nameserver %s\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n' \
    "$CLUSTER_IP" >"$state/resolv.conf"
  mount --bind "$state/resolv.conf" /etc/resolv.conf
  local images=${VMPOD_GUEST_IMAGES:-}
  if [ -n "$images" ]; then
    mkdir -p /var/lib/vmpod/images/test-guest
    mount --bind -o ro "$images" /var/lib/vmpod/images/test-guest
  fi
  mkdir -p /run/libvirt /var/lib/libvirt/qemu /var/log/libvirt/qemu /var/cache/libvirt
  exec "$@"
}

cmd=${1:-}; shift || true
case "$cmd" in
  create)
    case "$#:${2:-}" in 1: | 2:--dual-stack) ;; *) die "usage: create NAME [--dual-stack]" ;; esac
    create "$@"
    ;;
  destroy) [ $# -eq 1 ] || die "usage: destroy NAME"; destroy "$1" ;;
  exec)
    [ $# -ge 3 ] || die "usage: exec NAME STATE CMD..."
    name=$1 state=$(realpath -m "$2"); shift 2
    need unshare util-linux
    mkdir -p "$state"
    # --kill-child: if this process dies, the sandbox's PID 1 (and with it
    # every process of the sandbox) dies too; nothing outlives a test.
    exec ip netns exec "$name-pod" unshare --mount --pid --fork --mount-proc \
      --kill-child=SIGKILL --propagation private \
      "$0" __inner "$state" "$@"
    ;;
  __inner) inner "$@" ;;
  *) die "usage: pod-sandbox.sh create|exec|destroy ..." ;;
esac
