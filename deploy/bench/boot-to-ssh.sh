#!/usr/bin/env bash
# Boot-to-SSH benchmark of the Debian cloud guest (images/debian-cloud): vmpod as PID 1
# against bare libvirt (`virsh start`), the same image, overlay and NoCloud seed, side by side.
#
#   sudo deploy/bench/boot-to-ssh.sh
#
#   A  vmpod:  PID 1 = `vmpod run --config X` (X: domains/debian-cloud.yaml with this machine's
#              paths, network_config: static so that both sides boot without a DHCP wait)
#   B  virsh:  PID 1 = a shell that starts virtlogd and libvirtd, creates virbr0 (10.0.1.1/24),
#              makes the same overlay with qemu-img, puts A's seed (copied while A ran) at the
#              same path, `virsh define`s the XML of `vmpod render X --what domain` and
#              `virsh start`s it
#
# Each time runs from launching the sandbox command until `ssh debian@10.0.1.2 true` from the
# pod's network namespace first succeeds (both sides straight to the guest: no relay in the
# path). RUNS (default 1: each boot takes minutes under TCG) of each, A first (B needs its seed).
# Prints the times and vmpod's overhead (A - B).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
runs=${RUNS:-1}
timeout_s=${TIMEOUT_S:-900}
sandbox=$repo/deploy/local/pod-sandbox.sh
vmpod=${VMPOD:-$repo/target/debug/vmpod}
work=$(mktemp -d /tmp/vmpod-boot-to-ssh.XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT

[ "$(id -u)" = 0 ] || { echo "boot-to-ssh: needs root" >&2; exit 1; }
[ -x "$vmpod" ] || { echo "boot-to-ssh: build vmpod first (cargo build)" >&2; exit 1; }
image=$("$repo/images/debian-cloud/build.sh" | tail -1)

mkdir -p "$work/ci"
ssh-keygen -q -t ed25519 -N '' -C bench -f "$work/key"
cp "$work/key.pub" "$work/ci/authorized_keys"
printf '#cloud-config\n' >"$work/ci/user-data"
sed -e "s|/var/lib/vmpod/images/debian-cloud|$image|g" -e "s|/etc/vmpod/cloud-init|$work/ci|g" \
  -e 's|network_config: dhcp|network_config: static|' -e 's|  dhcp: true|  dhcp: false|' \
  "$repo/domains/debian-cloud.yaml" >"$work/vm.yaml"
"$vmpod" check "$work/vm.yaml" >&2
"$vmpod" render "$work/vm.yaml" --what domain >"$work/domain.xml"
name=debian-cloud
seed_rel=lib-libvirt/vmpod/$name-cidata.iso

wait_ssh() { # NS START -> seconds
  local ns=$1 start=$2
  while :; do
    if ip netns exec "$ns" ssh -i "$work/key" -o BatchMode=yes -o StrictHostKeyChecking=no \
      -o UserKnownHostsFile=/dev/null -o ConnectTimeout=2 -o LogLevel=ERROR debian@10.0.1.2 true 2>/dev/null; then
      echo "$(( $(date +%s%N) - start ))" | awk '{printf "%.1f", $1/1e9}'
      return 0
    fi
    (( ($(date +%s%N) - start) / 1000000000 < timeout_s )) || { echo "timeout"; return 1; }
    sleep 0.5
  done
}

run_side() { # SIDE -> seconds
  local side=$1 sb="bts$$-$side" state="$work/state-$side"
  "$sandbox" create "$sb"
  mkdir -p "$state/lib-libvirt/vmpod"
  local start pid t
  start=$(date +%s%N)
  if [ "$side" = vmpod ]; then
    "$sandbox" exec "$sb" "$state" "$vmpod" run --config "$work/vm.yaml" >"$state.log" 2>&1 &
    pid=$!
    # B boots with A's very seed.
    ( for _ in $(seq 600); do [ -s "$state/$seed_rel" ] && { sleep 1; cp "$state/$seed_rel" "$work/seed.iso"; exit; }; sleep 0.5; done ) &
  else
    cp "$work/seed.iso" "$state/$seed_rel"
    "$sandbox" exec "$sb" "$state" bash -c "
      set -e; virtlogd -d; libvirtd -d
      for _ in \$(seq 100); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.1; done
      ip link add virbr0 type bridge; ip addr add 10.0.1.1/24 dev virbr0; ip link set virbr0 up
      qemu-img create -q -f qcow2 -F qcow2 -b '$image/disk.qcow2' /var/lib/libvirt/vmpod/$name-disk0.qcow2 4G
      virsh -c qemu:///system define '$work/domain.xml' >/dev/null
      virsh -c qemu:///system start $name >/dev/null
      exec sleep infinity" >"$state.log" 2>&1 &
    pid=$!
  fi
  t=$(wait_ssh "$sb-pod" "$start") || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  "$sandbox" destroy "$sb" || true
  echo "$t"
}

printf '| run | vmpod (s) | virsh start (s) | overhead (s) |\n| --- | --- | --- | --- |\n'
for i in $(seq "$runs"); do
  a=$(run_side vmpod)
  b=$(run_side virsh)
  printf '| %s | %s | %s | %s |\n' "$i" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.1f", a-b}')"
done
