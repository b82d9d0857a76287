# Shared helpers of the vmpod test guest's scripts (sourced by busybox sh).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
VMPOD_IFACE=eth0

info()  { echo "vmpod-guest: $*"; }
error() { echo "VMPOD-GUEST-ERROR: $*"; }

# vmpod_param NAME: prints the value of vmpod.NAME=VALUE on the kernel command
# line (empty when absent; the last one wins). Values may be double-quoted.
# Parameters with a dot never reach init's argv or environment, hence
# /proc/cmdline. /run/vmpod/cmdline caches one argument per line.
vmpod_param() {
    if [ ! -s /run/vmpod/cmdline ]; then
        mkdir -p /run/vmpod
        xargs -n 1 printf '%s\n' </proc/cmdline >/run/vmpod/cmdline.tmp 2>/dev/null ||
            tr ' ' '\n' </proc/cmdline >/run/vmpod/cmdline.tmp
        mv /run/vmpod/cmdline.tmp /run/vmpod/cmdline
    fi
    sed -n "s/^vmpod\.$1=//p" /run/vmpod/cmdline | tail -n 1
}

is_true() {
    case "$1" in 1|y|Y|yes|true|on) return 0 ;; *) return 1 ;; esac
}

# The guest's current IPv4 address (set by rc or the udhcpc script).
current_ip() { cat /run/vmpod/ip 2>/dev/null; }

# True when a Router Advertisement gave the guest an IPv6 default route (via
# the router's link-local address; rc sets no IPv6 route itself). busybox ip
# prints no "proto ra", hence the fe80: test.
ipv6_router() {
    ip -6 route show default dev "$VMPOD_IFACE" 2>/dev/null | grep -q '^default via fe80:'
}

# The guest's current DHCPv6 address (set by the dhclient -6 script), if any.
current_ip6() { cat /run/vmpod/ip6 2>/dev/null; }

# (Re)writes the identity line that httpd serves on /.
write_identity() {
    name=$(vmpod_param name)
    [ -n "$name" ] || name=$(hostname)
    ip6=$(current_ip6)
    echo "vmpod-test-guest name=$name ip=$(current_ip)${ip6:+ ip6=$ip6}" >/www/index.html.tmp &&
        mv /www/index.html.tmp /www/index.html
}
