#!/usr/bin/env bash
# Runs vmpod's image the way the Kubernetes manifests run it, on this machine:
#
#   deploy/container/run.sh [--config FILE] [IMAGE]     (default image localhost/vmpod:dev)
#
# podman + runc, not privileged, every capability dropped except the ones
# deploy/k8s/base/statefulset.yaml adds, no_new_privs, /dev/kvm and /dev/net/tun as devices,
# the manifest's pod sysctls, in a "pod" network namespace from deploy/local/pod-sandbox.sh
# (eth0 10.89.0.2, with a "cluster" namespace at 10.89.0.1), and the test guest
# (target/test-guest, images/test-guest/build.sh) at /var/lib/vmpod/images/test-guest.
# Foreground: Ctrl-C or `podman stop vmpod-local` shuts the guest down gracefully; the
# namespaces are removed on exit. Needs root; build the image first with build.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
image=localhost/vmpod:dev
config=
while [ $# -gt 0 ]; do
    case "$1" in
    --config) config=$(realpath "$2"); shift 2 ;;
    -*) echo "usage: run.sh [--config FILE] [IMAGE]" >&2; exit 2 ;;
    *) image=$1; shift ;;
    esac
done
die() { echo "container/run: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, podman)"
command -v podman >/dev/null || die "podman is missing (deploy/local/install-deps.sh)"
podman image exists "$image" || die "no image $image; run deploy/container/build.sh first"
guest=$repo/target/test-guest
[ -s "$guest/vmlinuz" ] || guest=$("$repo/images/test-guest/build.sh" "$guest" | tail -1)

# The capabilities and sysctls of the manifest, so this runs with exactly what it grants.
manifest=$repo/deploy/k8s/base/statefulset.yaml
caps=$(awk '/^ *add:$/ {on = 1; next} on && /^ *- [A-Z_]+$/ {print $2; next} on && !/^ *#/ {on = 0}' "$manifest")
sysctls=$(awk '/^ *- name: net\./ {n = $3} /^ *value: / && n {gsub(/"/, "", $2); print n "=" $2; n = ""}' "$manifest")
[ -n "$caps" ] && [ -n "$sysctls" ] || die "cannot read capabilities and sysctls from $manifest"

args=(--rm --name vmpod-local --cap-drop ALL --security-opt no-new-privileges
    --device /dev/kvm --device /dev/net/tun --network ns:/run/netns/vmpodc-pod
    --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096
    --volume "$guest:/var/lib/vmpod/images/test-guest:ro")
for c in $caps; do args+=(--cap-add "$c"); done
for s in $sysctls; do args+=(--sysctl "$s"); done
[ -z "$config" ] || args+=(--volume "$config:/etc/vmpod/vm.yaml:ro")

"$repo/deploy/local/pod-sandbox.sh" destroy vmpodc 2>/dev/null || true
"$repo/deploy/local/pod-sandbox.sh" create vmpodc
trap '"$repo/deploy/local/pod-sandbox.sh" destroy vmpodc' EXIT
cat >&2 <<EOF
container/run: capabilities: $(echo $caps)
container/run: from the cluster namespace, once the guest is up:
  ip netns exec vmpodc-cl curl http://10.89.0.2:9080/
  ip netns exec vmpodc-cl curl http://10.89.0.2:8181/readyz
EOF
podman --runtime runc --cgroup-manager cgroupfs run "${args[@]}" "$image"
