#!/usr/bin/env bash
# The demo, non-interactive: vmpod runs one VM as a member of a pod, and the
# guest is reached through the pod in both directions.
#
#   deploy/local/demo.sh [CONFIG]       CONFIG defaults to domains/example.yaml
#
# As root on Debian 12, with only this repository: the same setup as run.sh
# (install-deps.sh, cargo build --release, images/test-guest/build.sh), in a
# sandbox named `vmpod-demo` (state in /tmp/vmpod-demo), vmpod in the
# background with its log in a file. Then:
#   1. the guest's HTTP server answers from the pod:
#        ip netns exec vmpod-demo-pod curl http://10.0.1.2:9080/
#   2. INGRESS: from the cluster, the pod's address and port reach the guest:
#        ip netns exec vmpod-demo-cl curl http://10.89.0.2:9080/
#   3. EGRESS: the guest fetches a file from a server in the cluster, and the
#      server sees the pod's address 10.89.0.2 as the client.
# Then a PASS/FAIL summary, SIGTERM to vmpod and its exit code (expected 0).
# Everything (namespaces, processes, /tmp/vmpod-demo) is removed on the way
# out, also on failure or Ctrl-C. Exits 0 only if every step passed and
# vmpod exited 0.
set -euo pipefail

# shellcheck disable=SC2034 # PROG is read by run.sh
PROG=demo.sh
# shellcheck source-path=SCRIPTDIR source=run.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/run.sh"

NAME=vmpod-demo
POD_NS=$NAME-pod
CL_NS=$NAME-cl
BOOT_TIMEOUT=120
STATE=/tmp/$NAME
VMPOD_LOG=$STATE/vmpod.log
SERVER_PID=
STEPS=()    # "PASS|FAIL<tab>step<tab>detail"
FAILED=0

say() { printf '\n==> %s\n' "$*"; }
show() { printf '    $ %s\n' "$*"; }
indent() { sed 's/^/    | /'; }
in_pod() { ip netns exec "$POD_NS" "$@"; }
in_cl() { ip netns exec "$CL_NS" "$@"; }

result() {
  local verdict=$1 step=$2 detail=${3:-}
  STEPS+=("$verdict"$'\t'"$step"$'\t'"$detail")
  [ "$verdict" = PASS ] || FAILED=1
  printf '    %s: %s%s\n' "$verdict" "$step" "${detail:+ ($detail)}"
}

vmpod_log_tail() {
  [ -s "$VMPOD_LOG" ] || return 0
  echo "---- vmpod's log, last 60 lines ($VMPOD_LOG) ----"
  tail -n 60 "$VMPOD_LOG"
  echo "---- end of vmpod's log ----"
}

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

demo_exit() {
  local rc=$?
  trap 'FORCE_STOP=1' INT TERM HUP
  trap '' PIPE # a closed terminal or pipe must not end the cleanup,
  set +e        # nor a failing step of it
  [ "$rc" != 130 ] || log "interrupted"
  stop_server
  if [ -n "$SANDBOX_PID" ]; then
    # Left early: a failure or a signal.
    sandbox_stop
    log "vmpod exited with code $STOP_RC"
  fi
  [ "$rc" = 0 ] || vmpod_log_tail
  if [ -n "$SANDBOX_CREATED" ]; then
    log "removing the sandbox $SANDBOX_NAME and $SANDBOX_STATE"
    sandbox_destroy
  fi
  exit "$rc"
}

# Step 1. Prints the guest's answer; fails if vmpod exits or 120 s pass.
wait_guest() {
  local url="http://$GUEST_IP:9080/" t0=$SECONDS body
  say "1. the guest's HTTP server, from the pod (waiting up to ${BOOT_TIMEOUT}s for the boot)"
  show "ip netns exec $POD_NS curl $url"
  while :; do
    # Until its setup ends, the guest answers "... ip=" (no address yet).
    if body=$(in_pod curl -sf -m 5 "$url" 2>/dev/null) && [[ $body == *ip=[0-9]* ]]; then
      printf '%s\n' "$body" | indent
      result PASS "guest HTTP from the pod" "after $((SECONDS - t0)) s"
      return 0
    fi
    if ! alive "$SANDBOX_PID"; then
      local rc=0
      wait "$SANDBOX_PID" || rc=$?
      SANDBOX_PID=
      result FAIL "guest HTTP from the pod" "vmpod exited with code $rc after $((SECONDS - t0)) s"
      return 1
    fi
    if [ $((SECONDS - t0)) -ge "$BOOT_TIMEOUT" ]; then
      result FAIL "guest HTTP from the pod" "no answer within ${BOOT_TIMEOUT}s"
      return 1
    fi
    sleep 1
  done
}

# Step 2: the pod's address and port, from the cluster, reach the guest.
ingress() {
  local url="http://$POD_IP:9080/" t0=$SECONDS out
  say "2. INGRESS: from the cluster, the pod's address and port (vmpod forwards them to the guest)"
  show "ip netns exec $CL_NS curl $url"
  while :; do
    if out=$(in_cl curl -sS -m 5 "$url" 2>&1) && [[ $out == *vmpod-test-guest* ]]; then
      printf '%s\n' "$out" | indent
      result PASS "ingress: cluster -> $POD_IP:9080 -> guest"
      return 0
    fi
    # The forwarder may start a moment after the guest answers: 10 s.
    if [ $((SECONDS - t0)) -ge 10 ]; then
      printf '%s\n' "$out" | indent
      result FAIL "ingress: cluster -> $POD_IP:9080 -> guest" "${out##*$'\n'}"
      return 1
    fi
    sleep 0.5
  done
}

# Step 3: the guest fetches from a cluster server, which sees the pod's address.
egress() {
  local www=$STATE/www srvlog=$STATE/cluster-http.log expected="hello from the cluster"
  local target="http://$CLUSTER_IP:8080/hello.txt"
  local url="http://$GUEST_IP:9080/cgi-bin/fetch?url=http%3A%2F%2F$CLUSTER_IP%3A8080%2Fhello.txt"
  say "3. EGRESS: the guest fetches $target from a server in the cluster"
  mkdir -p "$www"
  echo "$expected" >"$www/hello.txt"
  show "ip netns exec $CL_NS python3 -m http.server --bind $CLUSTER_IP 8080 --directory $www &"
  in_cl python3 -u -m http.server --bind "$CLUSTER_IP" 8080 --directory "$www" \
    </dev/null >"$srvlog" 2>&1 {LOCK_FD}<&- &
  SERVER_PID=$!
  local i
  for ((i = 0; i < 100; i++)); do
    in_cl ss -Hltn "sport = :8080" | grep -q . && break
    alive "$SERVER_PID" || break
    sleep 0.1
  done
  if ! in_cl ss -Hltn "sport = :8080" | grep -q .; then
    indent <"$srvlog"
    result FAIL "egress: guest fetch from the cluster" "the cluster web server did not start"
    result FAIL "egress: the server sees the pod's IP $POD_IP" "no server"
    stop_server
    return 1
  fi

  show "ip netns exec $POD_NS curl '$url'"
  local t0=$SECONDS t out code body ok=
  while :; do
    t=$SECONDS
    : >"$STATE/fetch.body"
    code=$(in_pod curl -sS -m 40 -o "$STATE/fetch.body" -w '%{http_code}' "$url" 2>"$STATE/fetch.err") || true
    body=$(cat "$STATE/fetch.body" "$STATE/fetch.err")
    if [ "$code" = 200 ] && [ "$body" = "$expected" ]; then
      ok=1
      break
    fi
    # Retry quick failures (the network may settle a moment after the boot);
    # a fetch that timed out in the guest is not repeated.
    if [ $((SECONDS - t)) -ge 10 ] || [ $((SECONDS - t0)) -ge 20 ]; then
      break
    fi
    echo "    HTTP $code: ${body##*$'\n'}; retrying"
    sleep 1
  done
  printf '%s\n' "$body" | indent
  echo "    (HTTP $code)"
  if [ -n "$ok" ]; then
    result PASS "egress: guest fetch from the cluster" "body: $body"
  else
    result FAIL "egress: guest fetch from the cluster" "HTTP $code: ${body##*$'\n'}"
  fi

  sleep 0.3 # the server's log line
  stop_server
  echo "    the cluster server's log (client address first):"
  if grep -q 'GET /hello.txt' "$srvlog"; then
    grep 'GET /hello.txt' "$srvlog" | indent
  else
    echo "    | (no request for /hello.txt arrived)"
  fi
  if grep -q "^$POD_IP - .*GET /hello.txt" "$srvlog"; then
    result PASS "egress: the server sees the pod's IP $POD_IP" "the guest's connection left as the pod's"
  else
    local seen
    seen=$(grep 'GET /hello.txt' "$srvlog" | awk '{print $1}' | sort -u | tr '\n' ' ')
    result FAIL "egress: the server sees the pod's IP $POD_IP" "seen: ${seen:-no request}"
  fi
  [ -n "$ok" ]
}

demo_main() {
  [ $# -le 1 ] || die "usage: deploy/local/demo.sh [CONFIG]"
  CONFIG=$(realpath -m "${1:-$REPO/domains/example.yaml}")
  [ -f "$CONFIG" ] || die "no config file $CONFIG"
  prepare
  if ! command -v python3 >/dev/null; then
    log "installing python3 (the cluster's web server)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3
  fi
  GUEST_IP=$(yaml_field guest_ip 10.0.1.2)

  trap demo_exit EXIT
  trap 'exit 130' INT TERM HUP
  say "starting vmpod as PID 1 of the sandbox $NAME with $CONFIG (log: $VMPOD_LOG)"
  sandbox_start "$NAME" "$CONFIG" "$VMPOD_LOG"
  local pid1
  pid1=$(wait_pid1 5) && echo "    vmpod runs, host pid $pid1"

  if wait_guest; then
    ingress || true
    egress || true
  else
    result FAIL "ingress: cluster -> $POD_IP:9080 -> guest" "not tried: no guest"
    result FAIL "egress: guest fetch from the cluster" "not tried: no guest"
  fi

  say "summary"
  local s
  for s in "${STEPS[@]}"; do
    IFS=$'\t' read -r verdict step _ <<<"$s"
    printf '    %-4s  %s\n' "$verdict" "$step"
  done

  if [ -n "$SANDBOX_PID" ]; then
    say "stopping vmpod (SIGTERM; the guest powers off, vmpod cleans up and exits)"
    sandbox_stop
    if [ "$STOP_RC" = 0 ]; then
      echo "    PASS  vmpod exited with code 0"
    else
      echo "    FAIL  vmpod exited with code $STOP_RC (expected 0)"
      FAILED=1
    fi
  fi
  echo
  if [ "$FAILED" = 0 ]; then
    echo "demo: PASS"
  else
    echo "demo: FAIL"
  fi
  exit "$FAILED"
}

demo_main "$@"
