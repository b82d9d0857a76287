#!/usr/bin/env bash
# Builds vmpod's Debian 12 cloud-style guest from Debian's packages with
# mmdebstrap (see README.md beside this script).
#
#   images/debian-cloud/build.sh [OUTDIR]     (default: <repo>/target/debian-cloud)
#
# Writes OUTDIR/disk.qcow2 (ext4 root filesystem, no partition table),
# OUTDIR/vmlinuz and OUTDIR/initrd.img (direct kernel boot: there is no
# bootloader in the disk), OUTDIR/cmdline (the kernel command line to use),
# OUTDIR/versions.txt, OUTDIR/packages.txt and OUTDIR/inputs.sha256, and
# prints OUTDIR's absolute path as the last line on stdout; everything else
# goes to stderr. Rebuilds only when the inputs (this directory's files, the
# apt sources, the candidate versions of the packages) changed.
# Needs root, Debian 12 amd64 with apt lists, mmdebstrap, qemu-img
# (deploy/local/install-deps.sh installs both).
# Environment: DEBIAN_CLOUD_CACHE (.deb cache dir, default
# OUTDIR/../debian-cloud-cache), DEBIAN_CLOUD_FORCE=1 (rebuild even when fresh),
# DEBIAN_CLOUD_SIZE (virtual disk size, default 2G).
set -euo pipefail

exec 3>&1 1>&2 # stdout is for the result only

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
outdir=${1:-$repo/target/debian-cloud}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
parent=$(dirname "$outdir")
cache=${DEBIAN_CLOUD_CACHE:-$parent/debian-cloud-cache}
size=${DEBIAN_CLOUD_SIZE:-2G}
sources=/etc/apt/sources.list.d/debian.sources
[ -s "$sources" ] || sources=/etc/apt/sources.list

log() { echo "debian-cloud: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# What a cloud image of Debian holds, without recommends (mmdebstrap's
# default): init and device manager, D-Bus and logind (hostnamectl for
# cloud-init; logind turns the ACPI power button into a clean poweroff),
# the cloud kernel flavour (virtio drivers, few modules) and its initramfs,
# cloud-init with ifupdown + ISC dhclient (what cloud-init renders on
# Debian 12 and what Debian's own cloud images use), SSH with sftp (scp
# uses it), the guest agent, resize2fs (cloud-init grows the root
# filesystem to a larger overlay), sudo for the default user, curl.
packages=(
    systemd-sysv udev dbus libpam-systemd
    linux-image-cloud-amd64 initramfs-tools
    cloud-init ifupdown isc-dhcp-client iproute2 netbase
    openssh-server openssh-sftp-server qemu-guest-agent
    e2fsprogs sudo curl ca-certificates
)
# Units a cloud guest has no use for at boot: periodic apt runs (and their
# randomized first run), e2scrub (needs LVM snapshots), fstrim, dpkg's
# database backup.
masked=(apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service
    fstrim.timer dpkg-db-backup.timer)
label=debian-root
# console=ttyS0: vmpod keeps the serial log. quiet: the kernel's printk over
# an emulated UART is slow under TCG. systemd.show_status=error: no progress
# lines nor the cursor-moving spinner, but failures still show.
# net.ifnames=0: the first NIC is eth0, as in vmpod's network-config.
# rw: no fsck and remount of the root (fstab pass 0).
cmdline="root=LABEL=$label rootfstype=ext4 rw console=ttyS0,115200n8 net.ifnames=0 quiet systemd.show_status=error"

[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap chroot mode, file owners in the image)"
[ "$(dpkg --print-architecture)" = amd64 ] || die "needs an amd64 Debian host"
for t in mmdebstrap qemu-img mkfs.ext4 flock; do
    command -v "$t" >/dev/null || die "$t is missing (run deploy/local/install-deps.sh)"
done

# One build at a time per parent directory: a second caller waits, then finds
# the output fresh.
lock=$parent/.debian-cloud.lock
exec 9>"$lock"
if ! flock -n 9; then
    log "waiting for $lock (another build is running)"
    flock 9
fi

# Candidate versions of the named packages (one apt-cache call): a new
# kernel or cloud-init rebuilds the image. Their dependencies are whatever
# the mirror has at build time.
declare -A ver
while read -r p v; do ver[$p]=$v; done < <(apt-cache policy "${packages[@]}" 2>/dev/null |
    awk '/^[^ ].*:$/ {p = substr($1, 1, length($1) - 1)} /^ *Candidate:/ {print p, $2}')
for p in "${packages[@]}"; do
    [ -n "${ver[$p]:-}" ] && [ "${ver[$p]}" != "(none)" ] ||
        die "no installable version of $p (apt lists missing? run apt-get update)"
done

inputs_hash() {
    local p f
    {
        echo "debian-cloud inputs v1 size=$size"
        echo "cmdline $cmdline"
        for p in "${packages[@]}"; do echo "package $p ${ver[$p]}"; done
        echo "masked ${masked[*]}"
        grep -v '^#' "$sources"
        (cd "$here" && find . -type f ! -name README.md -print | LC_ALL=C sort) | while read -r f; do
            echo "file $f $(stat -c %a "$here/$f") $(sha256sum <"$here/$f" | cut -c1-64)"
        done
    } | sha256sum | cut -c1-64
}
hash=$(inputs_hash)
outputs=(disk.qcow2 vmlinuz initrd.img cmdline versions.txt packages.txt)

fresh=1
for f in "${outputs[@]}"; do [ -s "$outdir/$f" ] || fresh=0; done
if [ "${DEBIAN_CLOUD_FORCE:-0}" != 1 ] && [ "$fresh" = 1 ] &&
    [ "$(cat "$outdir/inputs.sha256" 2>/dev/null)" = "$hash" ]; then
    log "up to date: $outdir (disk $(du -m "$outdir/disk.qcow2" | cut -f1) MB)"
    echo "$outdir" >&3
    exit 0
fi

start=$(date +%s)
log "building into $outdir (linux-image-cloud-amd64 ${ver[linux-image-cloud-amd64]}, cloud-init ${ver[cloud-init]})"
work=$(mktemp -d "$parent/.debian-cloud-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$cache"

# Documentation, manual pages and translations are left out (copyright
# files stay). The .debs are kept in $cache between builds (mmdebstrap's
# documented sync-in/sync-out idiom). The customize hooks run in the
# finished tree, before mmdebstrap's own cleanup.
mmdebstrap --variant=apt --mode=root --format=directory \
    --include="$(
        IFS=,
        echo "${packages[*]}"
    )" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --skip=download/empty --skip=essential/unlink \
    --setup-hook='mkdir -p "$1/var/cache/apt/archives"' \
    --setup-hook="sync-in '$cache' /var/cache/apt/archives" \
    --setup-hook="cp -a '$here/rootfs/.' \"\$1/\"" \
    --customize-hook="sync-out /var/cache/apt/archives '$cache'" \
    --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
    bookworm "$root" "$sources" >&2

log "configuring the tree"
# This directory's files again: a package's postinst (locales writes
# /etc/default/locale) must not have the last word.
cp -a "$here/rootfs/." "$root/"
# A cloud image carries no identity: no host keys (cloud-init makes them at
# first boot), an empty machine-id (systemd makes one), no host name.
rm -f "$root"/etc/ssh/ssh_host_*
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root/etc/hostname"
: >"$root/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
# Root on the whole disk; fsck skipped (pass 0, see cmdline's rw).
printf 'LABEL=%s\t/\text4\tdefaults,errors=remount-ro\t0\t0\n' "$label" >"$root/etc/fstab"
# No static network configuration: cloud-init writes
# /etc/network/interfaces.d/50-cloud-init from the seed (or DHCP on the
# first NIC without one).
printf 'source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n' >"$root/etc/network/interfaces"
chroot "$root" systemctl mask "${masked[@]}" >&2
kver=$(basename "$(find "$root/boot" -name 'vmlinuz-*' | LC_ALL=C sort | tail -n 1)")
kver=${kver#vmlinuz-}
[ -n "$kver" ] && [ -s "$root/boot/initrd.img-$kver" ] || die "no kernel or initramfs in /boot"
chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' >"$work/packages.txt"
{
    echo "kernel $kver"
    for p in "${packages[@]}"; do awk -v p="$p" '$1 == p {print}' "$work/packages.txt"; done
} >"$work/versions.txt"
cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$work/initrd.img"
echo "$cmdline" >"$work/cmdline"

log "making the ext4 filesystem ($size) and the qcow2"
# mkfs.ext4 -d copies the tree (owners, modes, xattrs, hard links) without a
# loop device. Fixed UUID and hash seed: same tree, same filesystem layout.
truncate -s "$size" "$work/disk.raw"
mkfs.ext4 -q -L "$label" -U 6d9f6e5c-2b0a-4f3e-9c1d-8a7b5e4c3d21 \
    -E hash_seed=0c4f3a2e-5d6b-4e7f-8a9b-1c2d3e4f5a6b -d "$root" "$work/disk.raw" >&2
treemb=$(du -sm "$root" | cut -f1)
rm -rf "$root" # tens of thousands of files: part of the build's cost
qemu-img convert -q -f raw -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
rm -f "$work/disk.raw"

# qemu runs as libvirt-qemu (uid 64055): it must be able to read the files
# and search the directory (mktemp made $work 0700; the files move out).
chmod 0644 "$work"/{disk.qcow2,vmlinuz,initrd.img,cmdline,versions.txt,packages.txt}
chmod 0755 "$outdir"
rm -f "$outdir/inputs.sha256"
for f in "${outputs[@]}"; do mv -f "$work/$f" "$outdir/$f"; done
echo "$hash" >"$outdir/inputs.sha256"
chmod 0644 "$outdir/inputs.sha256"
d=$outdir
while [ "$d" != / ]; do
    [ "$(($(stat -c '%#a' "$d") & 1))" = 1 ] ||
        log "warning: $d is not searchable by others: libvirt-qemu (uid 64055) cannot open the disk"
    d=$(dirname "$d")
done
log "done in $(($(date +%s) - start)) s: kernel $kver, disk.qcow2 $(du -m "$outdir/disk.qcow2" | cut -f1) MB" \
    "(tree $treemb MB), initrd.img $(du -k "$outdir/initrd.img" | cut -f1) KiB"
echo "$outdir" >&3
