#!/usr/bin/env bash
# Installs the Debian 12 packages that vmpod's tests, demo and benchmarks need.
# Idempotent: installs only what is missing. Needs root.
set -euo pipefail

packages=(
  # libvirt and qemu: the daemons vmpod supervises, and virsh for tests
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86
  # building the virt crate (libvirt bindings)
  libvirt-dev pkg-config
  # virt-xml-validate checks rendered domain XML against libvirt's schema
  libxml2-utils
  # the firewall and the network plumbing
  nftables iptables iproute2
  # the test guest: busybox userland, initramfs packing
  busybox-static cpio
  # IPv6 for the guest (tests/ipv6_ns.rs, images/test-guest): ISC dhclient -6 and dhcpcd are the
  # DHCPv6 clients the tests run (Debian 12's busybox has no udhcpc6), and the test guest's
  # initramfs carries dhclient; rdisc6 reads Router Advertisements as a host parses them
  isc-dhcp-client dhcpcd-base ndisc6
  # test clients and benchmark competitors
  curl socat iperf3 haproxy passt dnsperf
  # tests/dhcp_ns.rs: ISC dhclient, the DHCP client of Debian's cloud images (busybox's udhcpc
  # is the other one); tests/dns_ns.rs: dig queries the DNS forwarder over UDP and TCP
  isc-dhcp-client bind9-dnsutils
  # SASL for libvirt's authenticated TCP console
  sasl2-bin libsasl2-modules
  # tests/e2e_consoles.rs: its SPICE and VNC handshakes are python3 scripts, and the VNC one
  # answers the DES challenge with `openssl enc -des-ecb` (python has no DES)
  python3 openssl
  # the container image (tests/container_image.rs): podman builds and runs it; runc because
  # crun fails on this machine's hybrid cgroups; debootstrap makes the Debian 12 base image
  # from Debian's packages, since no container registry is reachable
  podman runc debootstrap
  # images/debian-cloud/build.sh: mmdebstrap builds the Debian cloud guest's tree, qemu-img
  # turns it into qcow2. qemu-utils must be the version of the installed qemu-system-x86
  # (Debian 12's 7.2 conflicts with a backported qemu-utils): apt picks the matching one
  mmdebstrap qemu-utils
  # tests/cloudinit_seed.rs: isoinfo reads the NoCloud seed ISO back (Joliet names)
  genisoimage
  # the offline Kubernetes manifest validators below (tests/k8s_manifests.rs): a Python venv
  # for kubernetes-validate, node for the Istio CRD validators
  python3-venv nodejs
)

if [ "$(id -u)" != 0 ]; then
  echo "install-deps.sh: needs root to install: ${packages[*]}" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps.sh: all ${#packages[@]} packages present" >&2
else
  echo "install-deps.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The packages enable libvirt's systemd units; vmpod runs its own daemons in
# sandboxes, so the machine's own must not hold the sockets.

# Offline validators for deploy/k8s (tests/k8s_manifests.rs, deploy/k8s/tools/validate.py),
# pinned, under VMPOD_K8S_TOOLS: kubernetes-validate (PyPI) ships Kubernetes' OpenAPI schemas
# as JSON schemas (strict variants reject unknown fields); @kubernetes-models/istio (npm)
# ships validators generated from Istio's CRD schemas.
tools=${VMPOD_K8S_TOOLS:-/opt/vmpod-tools}
if [ "$("$tools/venv/bin/kubernetes-validate" --version 2>/dev/null)" != 1.37.0 ]; then
  echo "install-deps.sh: kubernetes-validate 1.37.0 into $tools/venv" >&2
  /usr/bin/python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q kubernetes-validate==1.37.0
fi
if ! grep -qs '"version": "3.0.1"' "$tools/node/node_modules/@kubernetes-models/istio/package.json"; then
  echo "install-deps.sh: @kubernetes-models/istio 3.0.1 into $tools/node" >&2
  command -v npm >/dev/null || apt-get install -y -q --no-install-recommends npm
  mkdir -p "$tools/node"
  npm install -s --prefix "$tools/node" --no-audit --no-fund @kubernetes-models/istio@3.0.1
fi
# `kubectl kustomize` (Kustomize v5) builds the manifests. kubectl comes with this machine's
# image; Debian's kubernetes-client (1.20, Kustomize v2) is too old for their `labels` and
# `patches`, and no other registry here ships kustomize.
command -v kubectl >/dev/null ||
  echo "install-deps.sh: warning: kubectl is missing; tests/k8s_manifests.rs needs kubectl kustomize (v5)" >&2
