#!/usr/bin/env bash
# Boot-time benchmark: vmpod as PID 1 against bare libvirt driven by virsh,
# both booting the test guest (domains/example.yaml, egress mode kernel) in a
# fresh pod sandbox (deploy/local/pod-sandbox.sh).
#
#   sudo deploy/bench/boot-time.sh
#
#   A  vmpod:   PID 1 = `vmpod run --config X`
#   B  virsh:   PID 1 = a shell that starts `virtlogd -d` and `libvirtd -d`, creates
#               virbr0 (10.0.1.1/24, up), `virsh define`s the XML of
#               `vmpod render X --what domain`, `virsh start example`, then sleeps
#
# Each run's time goes from launching the sandbox command until
# `curl -sf -m 1 http://10.0.1.2:9080/` from the pod's network namespace first
# succeeds. A new curl starts every 100 ms while earlier ones may still be
# waiting (a curl sent before the guest answers ARP only gives up after its
# 1 s timeout, so polling one at a time would measure in ~1.1 s steps); the
# time is when the first successful curl returns.
#
# Runs are interleaved (A B, B A, A B, ...), RUNS of each (default 5), each in a
# new sandbox torn down afterwards. Prints a Markdown table (every run, the
# medians, vmpod/virsh ratio and vmpod's overhead in seconds, goal < 0.5 s) and
# writes the same as JSON to target/bench/boot-time.json.
#
# The machine is shared (2 cores, TCG): each run holds the test suite's VM
# slots, starts only once no other qemu runs and others use little CPU, and is
# repeated when others used MAX_FOREIGN_CPU cores or more on average during it.
#
# Environment:
#   RUNS=5             repetitions of each side
#   BOOT_TIMEOUT=180   seconds a boot may take before the benchmark fails
#   MAX_FOREIGN_CPU=0.25  cores other processes may use during a run
#   MAX_ATTEMPTS=10    tries per run before giving up
#   QUIET_TIMEOUT=600  seconds to wait for a quiet machine before giving up
#   VMPOD_BIN=...      the vmpod to measure (default: target/release/vmpod,
#                      built with `cargo build --release` first when cargo exists)
#   VMPOD_GUEST_IMAGES the test guest (default: <repo>/target/test-guest)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SANDBOX=$REPO/deploy/local/pod-sandbox.sh
RUNS=${RUNS:-5}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-180}
GUEST_URL=http://10.0.1.2:9080/
POLL=0.1
GOAL=0.5
OUT_JSON=$REPO/target/bench/boot-time.json
export VMPOD_GUEST_IMAGES=${VMPOD_GUEST_IMAGES:-$REPO/target/test-guest}

die() { echo "boot-time: $*" >&2; exit 1; }
log() { echo "boot-time: $*" >&2; }

[ "$(id -u)" = 0 ] || die "needs root (network namespaces, libvirt)"
for cmd in ip unshare flock curl virsh virtlogd libvirtd qemu-system-x86_64 awk sed sort; do
  command -v "$cmd" >/dev/null || die "$cmd is missing; run deploy/local/install-deps.sh"
done
[ -n "${EPOCHREALTIME:-}" ] || die "needs bash 5 (EPOCHREALTIME)"
for f in vmlinuz initrd.gz; do
  [ -f "$VMPOD_GUEST_IMAGES/$f" ] || die "no $VMPOD_GUEST_IMAGES/$f; build it with images/test-guest/build.sh"
done

if [ -n "${VMPOD_BIN:-}" ]; then
  VMPOD=$VMPOD_BIN
else
  VMPOD=$REPO/target/release/vmpod
  if command -v cargo >/dev/null; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release --quiet --bin vmpod) || die "cargo build --release failed"
  fi
fi
[ -x "$VMPOD" ] || die "no vmpod binary at $VMPOD (cargo build --release)"

# Two cores: anything else busy on the machine skews the runs. A run counts
# only when the CPU that processes other than ours used meanwhile stays under
# MAX_FOREIGN_CPU cores on average (busy time in /proc/stat minus what the
# sandbox's process tree and this script's own children used); otherwise it
# is repeated, as is one during which another qemu or a test suite ran.
# Before each run the machine must be that quiet, with no other qemu and no
# test suite, for a few seconds.
MAX_FOREIGN_CPU=${MAX_FOREIGN_CPU:-0.25}
QUIET_TIMEOUT=${QUIET_TIMEOUT:-600}
HZ=$(getconf CLK_TCK)
# Ticks the machine spent busy (user, nice, system, irq, softirq).
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat; }
# Ticks of process $1 and every descendant, including children they reaped.
tree_ticks() {
  local sum=0 todo=("$1") pid stat kids f
  while ((${#todo[@]})); do
    pid=${todo[-1]}
    unset 'todo[-1]'
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    read -r -a f <<<"${stat##*) }"
    # utime stime cutime cstime: fields 14-17 of stat, 12-15 after "comm) ".
    sum=$((sum + f[11] + f[12] + f[13] + f[14]))
    kids=$(cat /proc/"$pid"/task/*/children 2>/dev/null) || true
    # shellcheck disable=SC2206
    todo+=($kids)
  done
  echo "$sum"
}
# Average cores used by others between two samples "machine ours epoch".
foreign_cores() {
  awk -v a="$1" -v b="$2" -v hz="$HZ" 'BEGIN {
    split(a, x, " "); split(b, y, " ")
    f = ((y[1] - x[1]) - (y[2] - x[2])) / hz / (y[3] - x[3])
    printf "%.2f", (f < 0 ? 0 : f) }'
}
cpu_sample() { echo "$(machine_ticks) $(tree_ticks $$) $EPOCHREALTIME"; }
other_qemu() { pgrep -f '^[^ ]*qemu-system' >/dev/null; }
test_suite() { pgrep -f 'cargo test|e2e_' >/dev/null; }
wait_quiet() {
  local since=${EPOCHREALTIME%.*} logged=-60 a b f
  while :; do
    a=$(cpu_sample)
    sleep 3
    b=$(cpu_sample)
    f=$(foreign_cores "$a" "$b")
    if ! other_qemu && ! test_suite &&
      awk -v f="$f" -v m="$MAX_FOREIGN_CPU" 'BEGIN { exit !(f < m) }'; then
      return 0
    fi
    ((${EPOCHREALTIME%.*} - since < QUIET_TIMEOUT)) ||
      die "the machine stayed busy (other VMs, tests or builds) for ${QUIET_TIMEOUT}s"
    if ((${EPOCHREALTIME%.*} - since - logged >= 60)); then
      logged=$((${EPOCHREALTIME%.*} - since))
      log "waiting for a quiet machine, ${logged}s so far (others use $f cores$(other_qemu && echo ', another qemu runs')$(test_suite && echo ', a test suite runs'))"
    fi
    sleep 2
  done
}
# The test suite's machine-wide VM slots (tests/support/guest.rs): holding
# all of them during a run keeps tests, and anything else that takes them,
# from booting VMs meanwhile.
SLOT_DIR=${TMPDIR:-/tmp}
lock_slots() {
  exec 8>"$SLOT_DIR/vmpod-test-vm-slot-0.lock" 9>"$SLOT_DIR/vmpod-test-vm-slot-1.lock"
  flock -w "$QUIET_TIMEOUT" 8 && flock -w "$QUIET_TIMEOUT" 9 ||
    die "the test VM slots stayed taken for ${QUIET_TIMEOUT}s"
}
unlock_slots() { exec 8>&- 9>&-; }

WORK=$(mktemp -d /tmp/vmpod-bench.XXXXXX)
CONFIG=$WORK/vm.yaml
sed 's/mode: tproxy/mode: kernel/' "$REPO/domains/example.yaml" >"$CONFIG"
grep -q 'mode: kernel' "$CONFIG" || die "domains/example.yaml has no 'mode: tproxy' to replace"
# (Warnings about the guest files are expected: they exist only inside the sandbox.)
"$VMPOD" check "$CONFIG" >/dev/null 2>"$WORK/check.log" || { cat "$WORK/check.log" >&2; die "vmpod check failed"; }

# PID 1 of the bare-libvirt sandbox. The XML comes as $1.
cat >"$WORK/bare-libvirt.sh" <<'EOF'
#!/bin/sh
set -e
virtlogd -d
libvirtd -d
ip link add virbr0 type bridge
ip addr add 10.0.1.1/24 dev virbr0
ip link set virbr0 up
# `libvirtd -d` may return before its socket accepts clients.
n=0
until virsh -q version >/dev/null 2>&1; do
  n=$((n + 1)); [ "$n" -le 600 ] || { echo "libvirtd never answered" >&2; exit 1; }
  sleep 0.05
done
virsh -q define "$1"
virsh -q start example
exec sleep infinity
EOF
chmod +x "$WORK/bare-libvirt.sh"

# The sandbox being measured, for cleanup on any exit.
CUR_NAME='' CUR_PID='' CUR_STATE=''

teardown() {
  if [ -n "$CUR_PID" ]; then
    # The exec'd `unshare --kill-child` takes PID 1, and with it the whole
    # pid namespace (daemons, qemu), down when it dies.
    # (unshare blocks SIGTERM while it waits for its child, hence SIGKILL.)
    kill -KILL "$CUR_PID" 2>/dev/null || true
    wait "$CUR_PID" 2>/dev/null || true
  fi
  # Polling curls still waiting for their timeout.
  local p
  for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$CUR_NAME" ] && { "$SANDBOX" destroy "$CUR_NAME" || log "cannot destroy sandbox $CUR_NAME"; }
  [ -n "$CUR_STATE" ] && rm -rf "$CUR_STATE"
  CUR_NAME='' CUR_PID='' CUR_STATE=''
}

cleanup() {
  teardown
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Caches warm before the first run, so it is not the only one reading
# qemu, libvirt and the guest from disk.
cat "$VMPOD" "$(command -v qemu-system-x86_64)" "$(command -v libvirtd)" \
  "$VMPOD_GUEST_IMAGES"/vmlinuz "$VMPOD_GUEST_IMAGES"/initrd.gz >/dev/null

# run_one vmpod|virsh RUN: sets SECONDS_TO_HTTP to the time until the guest
# answered, FOREIGN to the cores others used meanwhile, and DISTURBED to why
# the run does not count (empty when it does).
run_one() {
  local kind=$1 run=$2
  local name=vbench$$-${kind:0:2}$run
  local state=$WORK/$name
  mkdir -p "$state"
  CUR_NAME=$name CUR_STATE=$state
  "$SANDBOX" create "$name"
  local argv
  case $kind in
    vmpod) argv=("$VMPOD" run --config "$CONFIG") ;;
    virsh)
      # Rendered in the pod's netns, where vmpod detects the same uplink MTU.
      ip netns exec "$name-pod" "$VMPOD" render "$CONFIG" --what domain \
        >"$state/domain.xml" 2>"$state/render.log" || { cat "$state/render.log" >&2; die "vmpod render failed"; }
      argv=("$WORK/bare-libvirt.sh" "$state/domain.xml")
      ;;
  esac
  local ok=$state/ok
  : >"$ok"

  local cpu0
  cpu0=$(cpu_sample)
  local start=$EPOCHREALTIME
  RUST_LOG=info "$SANDBOX" exec "$name" "$state/root" "${argv[@]}" \
    </dev/null >"$state/pid1.log" 2>&1 &
  CUR_PID=$!

  while :; do
    ( if ip netns exec "$name-pod" curl -sf -m 1 -o /dev/null "$GUEST_URL" 2>/dev/null; then
        echo "$EPOCHREALTIME" >>"$ok"
      fi ) &
    sleep "$POLL"
    [ -s "$ok" ] && break
    if ! kill -0 "$CUR_PID" 2>/dev/null || ((${EPOCHREALTIME%.*} - ${start%.*} >= BOOT_TIMEOUT)); then
      log "$kind run $run: the guest did not answer (PID 1 $(kill -0 "$CUR_PID" 2>/dev/null && echo "still running after ${BOOT_TIMEOUT}s" || echo exited)); its log:"
      tail -n 40 "$state/pid1.log" >&2 || true
      exit 1
    fi
  done
  local first cpu1 qemus tests=0
  cpu1=$(cpu_sample)
  qemus=$(pgrep -fc '^[^ ]*qemu-system' || true)
  test_suite && tests=1
  first=$(sort -n "$ok" | head -n 1)
  teardown
  SECONDS_TO_HTTP=$(awk -v a="$start" -v b="$first" 'BEGIN { printf "%.3f", b - a }')
  FOREIGN=$(foreign_cores "$cpu0" "$cpu1")
  # Another VM or a test suite meanwhile disqualifies the run whatever the CPU.
  DISTURBED=''
  [ "${qemus:-0}" -le 1 ] || DISTURBED='another qemu ran'
  [ "$tests" = 0 ] || DISTURBED='a test suite ran'
  awk -v f="$FOREIGN" -v m="$MAX_FOREIGN_CPU" 'BEGIN { exit !(f >= m) }' &&
    DISTURBED="others used $FOREIGN cores"
  return 0
}

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
A=() B=() FA=() FB=() REPEATED=0
MAX_ATTEMPTS=${MAX_ATTEMPTS:-10}
for ((i = 1; i <= RUNS; i++)); do
  if ((i % 2)); then order=(vmpod virsh); else order=(virsh vmpod); fi
  for kind in "${order[@]}"; do
    for ((attempt = 1; ; attempt++)); do
      ((attempt <= MAX_ATTEMPTS)) || die "run $i $kind: disturbed by other processes $MAX_ATTEMPTS times"
      wait_quiet
      lock_slots
      run_one "$kind" "$i"
      unlock_slots
      [ -z "$DISTURBED" ] && break
      log "run $i $kind: ${SECONDS_TO_HTTP}s, but $DISTURBED meanwhile; repeating it"
      REPEATED=$((REPEATED + 1))
    done
    t=$SECONDS_TO_HTTP
    log "run $i $kind: ${t}s (others used $FOREIGN cores)"
    if [ "$kind" = vmpod ]; then A+=("$t") FA+=("$FOREIGN"); else B+=("$t") FB+=("$FOREIGN"); fi
  done
done

MA=$(median "${A[@]}")
MB=$(median "${B[@]}")
RATIO=$(awk -v a="$MA" -v b="$MB" 'BEGIN { printf "%.3f", a / b }')
DIFF=$(awk -v a="$MA" -v b="$MB" 'BEGIN { printf "%+.3f", a - b }')
MET=$(awk -v d="$DIFF" -v g="$GOAL" 'BEGIN { print (d < g) ? "met" : "missed" }')
COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]; then COMMIT="$COMMIT+dirty"; fi

f2() { awk -v x="$1" 'BEGIN { printf "%.2f", x }'; }
{
  echo "### Boot to guest HTTP: vmpod vs bare libvirt ($DATE, commit $COMMIT, $(nproc) cores)"
  echo
  echo "| run | vmpod run (s) | libvirtd + virsh (s) |"
  echo "|----:|--------------:|---------------------:|"
  for ((i = 0; i < RUNS; i++)); do
    echo "| $((i + 1)) | $(f2 "${A[$i]}") | $(f2 "${B[$i]}") |"
  done
  echo "| **median** | **$(f2 "$MA")** | **$(f2 "$MB")** |"
  echo
  echo "| vmpod / virsh | vmpod − virsh (overhead) | goal |"
  echo "|--------------:|-------------------------:|:-----|"
  echo "| $(awk -v r="$RATIO" 'BEGIN { printf "%.2f", r }') | $(awk -v d="$DIFF" 'BEGIN { printf "%+.2f", d }') s | < $GOAL s: $MET |"
}

join() { local IFS=,; echo "$*"; }
mkdir -p "$(dirname "$OUT_JSON")"
cat >"$OUT_JSON" <<EOF
{
  "date": "$DATE",
  "commit": "$COMMIT",
  "cores": $(nproc),
  "config": "domains/example.yaml with mode: kernel",
  "probe": "curl -sf -m 1 $GUEST_URL from the pod netns, a new one every ${POLL}s",
  "runs": $RUNS,
  "vmpod_seconds": [$(join "${A[@]}")],
  "virsh_seconds": [$(join "${B[@]}")],
  "vmpod_foreign_cpu_cores": [$(join "${FA[@]}")],
  "virsh_foreign_cpu_cores": [$(join "${FB[@]}")],
  "max_foreign_cpu_cores": $MAX_FOREIGN_CPU,
  "runs_repeated_for_disturbance": $REPEATED,
  "vmpod_median": $MA,
  "virsh_median": $MB,
  "ratio_vmpod_over_virsh": $RATIO,
  "overhead_seconds": ${DIFF#+},
  "goal_overhead_seconds": $GOAL,
  "goal_met": $([ "$MET" = met ] && echo true || echo false)
}
EOF
log "wrote ${OUT_JSON#"$REPO"/}"
