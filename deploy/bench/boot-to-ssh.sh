#!/usr/bin/env bash
# Boot-to-SSH benchmark of the Debian cloud guest (images/debian-cloud): vmpod as PID 1
# against bare libvirt (`virsh define` + `virsh start`), the same image, overlay, NoCloud
# seed and domain XML, side by side.
#
#   sudo deploy/bench/boot-to-ssh.sh
#
#   A  vmpod:  PID 1 = `vmpod run --config X`, X = domains/debian-cloud.yaml with this
#              machine's paths and `network_config: static` + `network.dhcp: false`
#   B  bare:   PID 1 = a small reaping init (python3) that starts virtlogd and libvirtd,
#              creates virbr0 (10.0.1.1/24, what vmpod's bridge is), makes the same
#              ephemeral overlay with qemu-img, puts A's very seed (copied while A ran) at
#              the same path, `virsh define`s the XML of `vmpod render X --what domain`
#              (rendered in B's pod namespace, so it sees the uplink MTU vmpod saw) and
#              `virsh start`s it
#
# Network: the seed's network-config is `static` (10.0.1.2/24 via 10.0.1.1 on the guest's
# MAC), so neither side needs a DHCP server and neither waits for one: B has only a bridge,
# no dnsmasq. (With `dhcp` and no server the guest waits 64 s in networking.service.)
#
# Why the init in B: libvirtd's capability probe runs qemu daemonized, so that qemu's
# parent is PID 1. A PID 1 that does not reap (`exec sleep infinity`, or libvirtd itself)
# leaves it a zombie that libvirtd waits on ("Failed to terminate process N with SIGKILL:
# Device or resource busy" every 40 s) and `virsh define` does not finish: why B never
# reached SSH in an earlier version of this script. vmpod reaps as PID 1.
#
# Each time runs from launching the sandbox's PID 1 until `ssh debian@10.0.1.2 true` from
# the pod's network namespace first succeeds (straight to the guest on both sides: no relay
# in the path). One ssh at a time, 0.5 s apart: a refused one returns at once, one sent
# before the guest answers ARP waits its 10 s connect timeout. Not several in parallel: under
# TCG sshd takes seconds per connection, and parallel attempts that time out in the banner
# exchange fill its MaxStartups, so it resets the next ones and never lets one in. RUNS (default 1: each boot takes minutes under TCG) of
# each, A first in each pair (B needs its seed). Prints a Markdown table: both times, the
# ratio vmpod ÷ bare and the difference; then vmpod's own boot steps and B's define and
# start, per run. Every run holds the test suite's two VM slots (tests/support/guest.rs),
# so no test guest boots meanwhile.
#
# Environment:
#   RUNS=1            pairs of runs
#   TIMEOUT_S=900     seconds a boot may take before it counts as failed
#   VMPOD=...         the vmpod to measure (default target/release/vmpod, built first when
#                     cargo exists; target/debug/vmpod also works)
#   KVM_DEV=udev      give both sandboxes a /dev/kvm as udev makes it (root:kvm 0660) in their
#                     own mount namespace. This machine has no udev: /dev/kvm is root 0600,
#                     qemu's user (libvirt-qemu, group kvm) cannot open it, and libvirt then
#                     finds its cached qemu capabilities outdated at every lookup ("KVM was
#                     enabled when probing ..., but it is not available now") and re-probes
#                     qemu many times per define and start (about 20 s per `virsh define`
#                     here; 0.1 s with KVM_DEV=udev). The guest still runs under TCG (its
#                     XML says type='qemu'; vmpod's `accel: auto` sees no vmx/svm).
#   KEEP_LOGS=DIR     copy each side's PID 1 log there
#   SLOTS=1           hold one VM slot instead of both (see below)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
runs=${RUNS:-1}
timeout_s=${TIMEOUT_S:-900}
sandbox=$repo/deploy/local/pod-sandbox.sh
name=debian-cloud
seed_rel=lib-libvirt/vmpod/$name-cidata.iso

die() { echo "boot-to-ssh: $*" >&2; exit 1; }
log() { echo "boot-to-ssh: $*" >&2; }

[ "$(id -u)" = 0 ] || die "needs root (network namespaces, libvirt)"
for cmd in ip unshare flock ssh ssh-keygen virsh virtlogd libvirtd qemu-system-x86_64 qemu-img python3 awk; do
  command -v "$cmd" >/dev/null || die "$cmd is missing; run deploy/local/install-deps.sh"
done
[ -n "${EPOCHREALTIME:-}" ] || die "needs bash 5 (EPOCHREALTIME)"
if [ -z "${VMPOD:-}" ]; then
  VMPOD=$repo/target/release/vmpod
  if command -v cargo >/dev/null; then
    log "cargo build --release"
    (cd "$repo" && cargo build --release --quiet --bin vmpod) || die "cargo build --release failed"
  fi
fi
[ -x "$VMPOD" ] || die "no vmpod binary at $VMPOD"
image=$("$repo/images/debian-cloud/build.sh" | tail -1)
[ -s "$image/disk.qcow2" ] || die "images/debian-cloud/build.sh made no disk.qcow2"
# The sandbox mounts the test guest's directory (an empty one will do).
export VMPOD_GUEST_IMAGES=${VMPOD_GUEST_IMAGES:-$repo/target/test-guest}
mkdir -p "$VMPOD_GUEST_IMAGES"

work=$(mktemp -d /tmp/vmpod-boot-to-ssh.XXXXXX)
chmod 755 "$work" # qemu (libvirt-qemu) reads nothing here, but libvirtd checks paths
cur_pid='' cur_sb=''
teardown() {
  if [ -n "$cur_pid" ]; then
    # unshare --kill-child takes the whole pid namespace down with it; it
    # blocks SIGTERM while it waits, hence SIGKILL.
    kill -KILL "$cur_pid" 2>/dev/null || true
    wait "$cur_pid" 2>/dev/null || true
  fi
  local p
  for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$cur_sb" ] && { "$sandbox" destroy "$cur_sb" || log "cannot destroy sandbox $cur_sb"; }
  cur_pid='' cur_sb=''
}
trap 'teardown; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# The test suite's VM slots: with both held, no test guest boots while this runs.
# SLOTS=1 takes whichever one is free (one guest runs at a time here): the figures are
# then as noisy as the other guest makes them.
exec 8>"${TMPDIR:-/tmp}/vmpod-test-vm-slot-0.lock" 9>"${TMPDIR:-/tmp}/vmpod-test-vm-slot-1.lock"
if [ "${SLOTS:-2}" = 1 ]; then
  until flock -n 8 || flock -n 9; do sleep 1; done
else
  flock -w 1800 8 && flock -w 1800 9 || die "the test VM slots stayed taken for 30 min"
fi

mkdir -p "$work/ci"
ssh-keygen -q -t ed25519 -N '' -C bench -f "$work/key"
cp "$work/key.pub" "$work/ci/authorized_keys"
printf '#cloud-config\n' >"$work/ci/user-data"
sed -e "s|/var/lib/vmpod/images/debian-cloud|$image|g" -e "s|/etc/vmpod/cloud-init|$work/ci|g" \
  -e 's|network_config: dhcp|network_config: static|' -e 's|  dhcp: true|  dhcp: false|' \
  "$repo/domains/debian-cloud.yaml" >"$work/vm.yaml"
grep -q 'network_config: static' "$work/vm.yaml" || die "domains/debian-cloud.yaml has no network_config: dhcp to replace"
"$VMPOD" check "$work/vm.yaml" >&2

# PID 1 of either side: optionally the udev-like /dev/kvm, then the command.
cat >"$work/pid1.sh" <<'EOF'
#!/bin/sh
set -e
if [ "${KVM_DEV:-}" = udev ] && [ -c /dev/kvm ]; then
  # Only in this sandbox's mount namespace: the machine's /dev/kvm is untouched.
  mkdir -p /run/kvm-node && mount -t tmpfs -o mode=0755 tmpfs /run/kvm-node
  mknod -m 0660 /run/kvm-node/kvm c 10 232 && chgrp kvm /run/kvm-node/kvm
  mount --bind /run/kvm-node/kvm /dev/kvm
fi
exec "$@"
EOF
# B's PID 1 reaps every child (see the header) and does nothing else: the steps run in a
# child of it (bare-steps.sh), so orphans reach a PID 1 that waits for them. (A PID 1 that
# runs the steps itself waits only for the step at hand, and libvirtd hangs as above.)
cat >"$work/bare-init.py" <<'EOF'
import os, subprocess, sys, time
subprocess.Popen(["bash", sys.argv[1], sys.argv[2]])
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(1)
EOF
# B's steps, each timed. $1: the domain XML.
cat >"$work/bare-steps.sh" <<'EOF'
set -e
t0=$EPOCHREALTIME
step() { # WHAT CMD...
  local what=$1 t=$EPOCHREALTIME
  shift
  "$@" >/dev/null
  awk -v w="$what" -v a="$t" -v b="$EPOCHREALTIME" -v z="$t0" \
    'BEGIN { printf "bare step %s: %.3f s (at %.3f s)\n", w, b - a, b - z }'
}
step "start virtlogd" virtlogd -d
step "start libvirtd" libvirtd -d
step "connect to libvirt" sh -c 'until virsh -c qemu:///system version >/dev/null 2>&1; do sleep 0.05; done'
step "create bridge" sh -c 'ip link add virbr0 type bridge && ip addr add 10.0.1.1/24 dev virbr0 && ip link set virbr0 up'
step "create overlay" qemu-img create -q -f qcow2 -F qcow2 -b "$IMAGE/disk.qcow2" "/var/lib/libvirt/vmpod/$NAME-disk0.qcow2" 4G
step "define domain" virsh -q -c qemu:///system define "$1"
step "start domain" virsh -q -c qemu:///system start "$NAME"
EOF
chmod 755 "$work/pid1.sh"

# run_side vmpod|bare RUN: sets SECS (empty when no SSH within TIMEOUT_S) and leaves the
# PID 1 log in $work/RUN-SIDE.log.
run_side() {
  local side=$1 run=$2 sb="bts$$-${1:0:2}$2" state="$work/state-$1-$2" ok start argv
  cur_sb=$sb
  "$sandbox" create "$sb"
  mkdir -p "$state/lib-libvirt/vmpod"
  case $side in
    vmpod) argv=("$VMPOD" run --config "$work/vm.yaml") ;;
    bare)
      ip netns exec "$sb-pod" "$VMPOD" render "$work/vm.yaml" --what domain >"$work/domain.xml"
      cp "$work/seed.iso" "$state/$seed_rel"
      argv=(python3 "$work/bare-init.py" "$work/bare-steps.sh" "$work/domain.xml")
      ;;
  esac
  ok=$work/ok-$side-$run
  : >"$ok"
  start=$EPOCHREALTIME
  RUST_LOG=info KVM_DEV=${KVM_DEV:-} IMAGE=$image NAME=$name "$sandbox" exec "$sb" "$state" "$work/pid1.sh" "${argv[@]}" \
    </dev/null >"$work/$run-$side.log" 2>&1 &
  cur_pid=$!
  local copied=0
  SECS=''
  while :; do
    if ip netns exec "$sb-pod" ssh -i "$work/key" -o BatchMode=yes -o IdentitiesOnly=yes \
      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10 \
      -o LogLevel=ERROR debian@10.0.1.2 true </dev/null 2>/dev/null; then
      echo "$EPOCHREALTIME" >>"$ok"
    fi
    # B boots with A's very seed: vmpod removes it at stop.
    if [ "$side" = vmpod ] && [ "$copied" = 0 ] && [ -s "$state/$seed_rel" ]; then
      sleep 1 && cp "$state/$seed_rel" "$work/seed.iso" && copied=1
    fi
    sleep 0.5
    if [ -s "$ok" ]; then
      SECS=$(awk -v a="$start" -v b="$(sort -n "$ok" | head -n 1)" 'BEGIN { printf "%.1f", b - a }')
      break
    fi
    if ! kill -0 "$cur_pid" 2>/dev/null || ((${EPOCHREALTIME%.*} - ${start%.*} >= timeout_s)); then
      log "$side run $run: no SSH ($(kill -0 "$cur_pid" 2>/dev/null && echo "after ${timeout_s}s" || echo "PID 1 exited")); its log:"
      tail -n 40 "$work/$run-$side.log" >&2 || true
      break
    fi
  done
  [ "$side" = vmpod ] && [ "$copied" = 0 ] && die "vmpod run $run wrote no seed to copy"
  teardown
  [ -n "${KEEP_LOGS:-}" ] && { mkdir -p "$KEEP_LOGS"; cp "$work/$run-$side.log" "$KEEP_LOGS/"; }
  return 0
}

log "load before: $(uptime)"
results=()
for i in $(seq "$runs"); do
  run_side vmpod "$i"
  a=$SECS
  run_side bare "$i"
  b=$SECS
  results+=("$i $a $b")
done
log "load after: $(uptime)"

echo "Boot to SSH of the Debian cloud guest (TCG, 1 vCPU), KVM_DEV=${KVM_DEV:-machine}"
printf '| run | vmpod (s) | bare libvirt (s) | vmpod ÷ bare | vmpod − bare (s) |\n| --- | --- | --- | --- | --- |\n'
for r in "${results[@]}"; do
  read -r i a b <<<"$r"
  awk -v i="$i" -v a="${a:-}" -v b="${b:-}" 'BEGIN {
    if (a == "" || b == "") { printf "| %s | %s | %s | - | - |\n", i, (a == "" ? "no SSH" : a), (b == "" ? "no SSH" : b); exit }
    printf "| %s | %s | %s | %.3f | %+.1f |\n", i, a, b, a / b, a - b }'
done
for r in "${results[@]}"; do
  read -r i _ <<<"$r"
  echo
  echo "run $i, vmpod's boot steps (ms):"
  sed -n 's/\x1b\[[0-9;]*m//g; s/.*boot step done.*step="\{0,1\}\([^"=]*[^" ]\)"\{0,1\} ms=\([0-9]*\).*/  \1: \2/p;
          s/.*guest is up: ready.* ms=\([0-9]*\).*/  guest is up (all steps): \1/p' "$work/$i-vmpod.log"
  echo "run $i, bare libvirt's steps:"
  grep '^bare step' "$work/$i-bare.log" | sed 's/^bare step /  /' || echo "  (none logged)"
done
