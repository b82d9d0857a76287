#!/usr/bin/env bash
# Runs vmpod on this machine the way a pod would: as PID 1 of a pod sandbox
# (deploy/local/pod-sandbox.sh), in the foreground, its logs on the terminal.
#
#   deploy/local/run.sh [CONFIG]        CONFIG defaults to domains/example.yaml
#
# As root on Debian 12: installs the packages (install-deps.sh), builds vmpod
# (cargo build --release) and the test guest (images/test-guest/build.sh),
# creates the sandbox `vmpod-local` (network namespaces vmpod-local-pod and
# vmpod-local-cl; a stale one is destroyed first), prints how to reach the
# guest, then runs `vmpod run --config CONFIG` until it exits or you press
# Ctrl-C. On Ctrl-C (or SIGTERM, SIGHUP, any exit) vmpod gets SIGTERM and
# shuts the guest down gracefully; after 45 s it is killed. Then the
# namespaces and the state directory /tmp/vmpod-local are removed. A second
# Ctrl-C skips the wait. Exits with vmpod's exit code (0 after a clean stop).
#
# Environment:
#   VMPOD_BIN=PATH     use this vmpod binary instead of building one
#   RUST_LOG, LOG_FORMAT are passed on to vmpod.
#
# deploy/local/demo.sh sources this file for the functions below; only when
# run directly does it do the above.
set -euo pipefail

LOCAL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LOCAL_DIR/../.." && pwd)
SANDBOX_SH=$LOCAL_DIR/pod-sandbox.sh
PROG=${PROG:-$(basename "$0")}
# How long vmpod gets after SIGTERM (the example's shutdown_grace is 30 s).
STOP_TIMEOUT=${VMPOD_STOP_TIMEOUT:-45}
POD_IP=10.89.0.2
CLUSTER_IP=10.89.0.1

SANDBOX_NAME=
SANDBOX_STATE=
SANDBOX_CREATED=
SANDBOX_PID=   # the process started for the sandbox (unshare); its exit is vmpod's exit
STOP_RC=       # vmpod's exit code, once it has exited
FORCE_STOP=

log() { echo "$PROG: $*" >&2 || true; }
die() {
  log "error: $*"
  exit 1
}

# Root, one run at a time (a lock on the calling script), packages, builds.
# Sets VMPOD_EXE and GUEST_DIR.
prepare() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces, libvirt, nftables): run it with sudo"
  exec {LOCK_FD}<"$0"
  flock -n "$LOCK_FD" || die "another $PROG is running (it holds a lock on $0)"

  log "installing missing packages (deploy/local/install-deps.sh)"
  "$LOCAL_DIR/install-deps.sh"
  # The test guest's builder downloads Debian packages: it needs apt lists.
  if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
    log "no apt package lists: apt-get update"
    apt-get update -q
  fi

  if [ -n "${VMPOD_BIN:-}" ]; then
    [ -x "$VMPOD_BIN" ] || die "VMPOD_BIN=$VMPOD_BIN is not an executable"
    VMPOD_EXE=$(realpath "$VMPOD_BIN")
    log "using $VMPOD_EXE (VMPOD_BIN), not building"
  else
    if ! command -v cargo >/dev/null && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
      PATH=${HOME:-/root}/.cargo/bin:$PATH
    fi
    if ! command -v cargo >/dev/null; then
      local user_home
      user_home=$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)
      if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] && [ -x "$user_home/.cargo/bin/cargo" ]; then
        die "cargo is $SUDO_USER's, not root's: build as $SUDO_USER (cargo build --release), then: sudo VMPOD_BIN=$REPO/target/release/vmpod $0 $CONFIG"
      fi
      die "cargo not found: install a Rust toolchain >= 1.85 for root (e.g. with rustup), or set VMPOD_BIN to a built vmpod"
    fi
    local minor
    minor=$(cargo --version | sed -nE 's/^cargo 1\.([0-9]+).*/\1/p')
    if [ -n "$minor" ] && [ "$minor" -lt 85 ]; then
      die "$(cargo --version) is too old: vmpod is edition 2024 (Rust >= 1.85; Debian 12's own cargo is 1.63)"
    fi
    log "building vmpod (cargo build --release)"
    (cd "$REPO" && cargo build --release)
    VMPOD_EXE=$REPO/target/release/vmpod
  fi

  log "building the test guest (images/test-guest/build.sh)"
  GUEST_DIR=$("$REPO/images/test-guest/build.sh" "$REPO/target/test-guest" | tail -n 1)
  [ -s "$GUEST_DIR/vmlinuz" ] && [ -s "$GUEST_DIR/initrd.gz" ] ||
    die "the test guest build left no vmlinuz/initrd.gz in $GUEST_DIR"
}

# A field of the config, the crude way (for messages only): yaml_field KEY DEFAULT
yaml_field() {
  local v
  v=$(awk -v k="$1:" '$1 == k {print $2; exit}' "$CONFIG" 2>/dev/null | tr -d '"'"'")
  echo "${v:-$2}"
}

# sandbox_start NAME CONFIG [LOGFILE]: a fresh sandbox (a stale one of the same
# name destroyed first, state in /tmp/NAME), vmpod as its PID 1 in the
# background, in a session of its own (so Ctrl-C reaches only this script,
# which stops vmpod with SIGTERM). Output to LOGFILE, or to this terminal.
sandbox_start() {
  local name=$1 config=$2 logfile=${3:-}
  SANDBOX_NAME=$name
  SANDBOX_STATE=/tmp/$name
  if ip netns list | grep -qE "^$name-(pod|cl)( |$)"; then
    log "destroying the stale sandbox $name"
  fi
  "$SANDBOX_SH" destroy "$name"
  rm -rf "$SANDBOX_STATE"
  mkdir -p "$SANDBOX_STATE"
  SANDBOX_CREATED=1
  "$SANDBOX_SH" create "$name"
  local cmd=(setsid -w env "VMPOD_GUEST_IMAGES=$GUEST_DIR"
    "$SANDBOX_SH" exec "$name" "$SANDBOX_STATE/root" "$VMPOD_EXE" run --config "$config")
  if [ -n "$logfile" ]; then
    "${cmd[@]}" </dev/null >"$logfile" 2>&1 {LOCK_FD}<&- &
  else
    "${cmd[@]}" </dev/null {LOCK_FD}<&- &
  fi
  SANDBOX_PID=$!
}

# Whether process $1 exists and is not a zombie.
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# The host pid of the sandbox's PID 1: the descendant of SANDBOX_PID that is
# pid 1 of its own pid namespace.
sandbox_pid1() {
  [ -n "$SANDBOX_PID" ] || return 1
  local todo=("$SANDBOX_PID") p
  while [ ${#todo[@]} -gt 0 ]; do
    p=${todo[0]}
    todo=("${todo[@]:1}")
    if awk '$1 == "NSpid:" { found = NF > 2 && $NF == 1 } END { exit !found }' \
      "/proc/$p/status" 2>/dev/null; then
      echo "$p"
      return 0
    fi
    # shellcheck disable=SC2207
    todo+=($(cat /proc/"$p"/task/*/children 2>/dev/null))
  done
  return 1
}

# Waits up to $1 seconds for the sandbox's PID 1 to appear; prints its host pid.
wait_pid1() {
  local i
  for ((i = 0; i < $1 * 10; i++)); do
    sandbox_pid1 && return 0
    alive "$SANDBOX_PID" || return 1
    sleep 0.1
  done
  return 1
}

# SIGTERM to the sandbox's PID 1, then up to STOP_TIMEOUT seconds for vmpod to
# exit (a SIGINT/SIGTERM meanwhile cuts that short), then SIGKILL. Sets STOP_RC.
sandbox_stop() {
  [ -n "$SANDBOX_PID" ] || return 0
  if alive "$SANDBOX_PID"; then
    local pid1 t0=$SECONDS
    if pid1=$(sandbox_pid1); then
      log "stopping vmpod: SIGTERM to the sandbox's PID 1 (host pid $pid1); waiting up to ${STOP_TIMEOUT}s (interrupt again to kill it at once)"
      kill -TERM "$pid1" 2>/dev/null || true
    fi
    while alive "$SANDBOX_PID" && [ $((SECONDS - t0)) -lt "$STOP_TIMEOUT" ] && [ -z "$FORCE_STOP" ]; do
      sleep 0.2
    done
    if alive "$SANDBOX_PID"; then
      if [ -n "$FORCE_STOP" ]; then
        log "interrupted again: killing the sandbox"
      else
        log "vmpod still runs after $((SECONDS - t0)) s: killing the sandbox"
      fi
      # unshare --kill-child takes PID 1, and with it the whole pid namespace.
      kill -KILL "$SANDBOX_PID" 2>/dev/null || true
    fi
  fi
  STOP_RC=0
  wait "$SANDBOX_PID" 2>/dev/null || STOP_RC=$?
  SANDBOX_PID=
}

# Removes the namespaces (killing whatever is left in them) and the state.
sandbox_destroy() {
  [ -n "$SANDBOX_CREATED" ] || return 0
  "$SANDBOX_SH" destroy "$SANDBOX_NAME" || log "warning: could not remove the namespaces of $SANDBOX_NAME"
  rm -rf "$SANDBOX_STATE"
  SANDBOX_CREATED=
}

print_help() {
  local name=$1 guest_ip domain pod=$1-pod cl=$1-cl
  guest_ip=$(yaml_field guest_ip 10.0.1.2)
  domain=$(yaml_field name example)
  cat <<EOF

==> vmpod starts in the sandbox "$name" with $CONFIG
    pod network namespace $pod (eth0 $POD_IP), cluster namespace $cl ($CLUSTER_IP);
    the guest ($guest_ip) boots in about 10-60 s (TCG). From another terminal, as root:

    the guest, from inside the pod:
        ip netns exec $pod curl http://$guest_ip:9080/
    ingress (pod port 9080 -> guest 9080), from the pod and from the cluster:
        ip netns exec $pod curl http://127.0.0.1:9080/
        ip netns exec $cl curl http://$POD_IP:9080/
    egress (the guest fetches from a server in the cluster, which sees $POD_IP):
        ip netns exec $cl python3 -m http.server --bind $CLUSTER_IP 8080 &
        ip netns exec $pod curl 'http://$guest_ip:9080/cgi-bin/fetch?url=http%3A%2F%2F$CLUSTER_IP%3A8080%2F'
    vmpod's health endpoint (once vmpod serves it):
        ip netns exec $pod curl http://127.0.0.1:8181/healthz
    a shell in the pod (its mounts, pids, network; virsh -c qemu:///system console $domain):
        nsenter -t PID1 -m -p -n     (PID1: printed below once vmpod runs)

    Ctrl-C stops vmpod (the guest powers off gracefully) and removes the sandbox.

EOF
}

run_main() {
  [ $# -le 1 ] || die "usage: deploy/local/run.sh [CONFIG]"
  CONFIG=$(realpath -m "${1:-$REPO/domains/example.yaml}")
  [ -f "$CONFIG" ] || die "no config file $CONFIG"
  local name=vmpod-local
  prepare
  trap 'run_exit' EXIT
  trap 'exit 130' INT TERM HUP
  print_help "$name"
  sandbox_start "$name" "$CONFIG"
  local pid1
  if pid1=$(wait_pid1 5); then
    log "vmpod runs as PID 1 of the sandbox, host pid $pid1; a shell in the pod: nsenter -t $pid1 -m -p -n bash"
  fi
  local rc=0
  wait "$SANDBOX_PID" || rc=$?
  # vmpod exited by itself (a signal to this script runs the EXIT trap instead).
  SANDBOX_PID=
  STOP_RC=$rc
  exit "$rc"
}

run_exit() {
  local rc=$?
  trap 'FORCE_STOP=1' INT TERM HUP
  # A closed terminal or pipe (`run.sh | tee log` and Ctrl-C) must not end the cleanup.
  trap '' PIPE
  set +e # and neither must any failing step of it
  if [ -n "$SANDBOX_PID" ]; then
    sandbox_stop
  fi
  [ -n "$STOP_RC" ] && log "vmpod exited with code $STOP_RC" && rc=$STOP_RC
  if [ -n "$SANDBOX_CREATED" ]; then
    log "removing the sandbox $SANDBOX_NAME and $SANDBOX_STATE"
    sandbox_destroy
  fi
  exit "$rc"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  run_main "$@"
fi
