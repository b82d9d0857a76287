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
  # test clients and benchmark competitors
  curl socat iperf3 haproxy
  # SASL for libvirt's authenticated TCP console
  sasl2-bin libsasl2-modules
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
  exit 0
fi
echo "install-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
# The packages enable libvirt's systemd units; vmpod runs its own daemons in
# sandboxes, so the machine's own must not hold the sockets.
