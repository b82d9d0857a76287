#!/usr/bin/env bash
# Builds the vmpod test guest, a kernel and an initramfs made from Debian
# packages only (see README.md beside this script).
#
#   images/test-guest/build.sh [OUTDIR]      (default: <repo>/target/test-guest)
#
# Writes OUTDIR/vmlinuz, OUTDIR/initrd.gz, OUTDIR/versions.txt and
# OUTDIR/inputs.sha256, and prints OUTDIR's absolute path as the last line on
# stdout; everything else goes to stderr. Rebuilds only when the inputs (this
# script, the files it packs, the versions of the Debian packages) changed.
# Needs root (for mknod; apt-get download), Debian 12 amd64 with apt lists.
# Environment: TEST_GUEST_CACHE (.deb cache dir, default
# OUTDIR/../test-guest-cache), TEST_GUEST_FORCE=1 (rebuild even when fresh).
set -euo pipefail

exec 3>&1 1>&2 # stdout is for the result only

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
outdir=${1:-$repo/target/test-guest}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
parent=$(dirname "$outdir")
cache=${TEST_GUEST_CACHE:-$parent/test-guest-cache}

log() { echo "test-guest: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Modules, in load order. virtio_ring must come before virtio ("unknown
# symbol" otherwise); button and evdev give acpid the ACPI power button.
modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
    failover net_failover virtio_net button evdev)
# Files of the packed userland other than busybox (perl runs the echo servers).
libs=(ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libcrypt.so.1)

# One build at a time per parent directory: a second caller waits, then finds
# the output fresh.
lock=$parent/.test-guest.lock
exec 9>"$lock"
if ! flock -n 9; then
    log "waiting for $lock (another build is running)"
    flock 9
fi

[ "$(dpkg --print-architecture)" = amd64 ] || die "needs an amd64 Debian host"

kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
[ -n "$kpkg" ] || die "apt-cache depends linux-image-amd64 names no kernel (run apt-get update)"
pkgs=("$kpkg" busybox-static perl-base libc6 libcrypt1 isc-dhcp-client)
# The versions apt-get download would fetch (one apt-cache call: each costs ~0.5 s).
declare -A ver
while read -r p v; do ver[$p]=$v; done < <(apt-cache policy "${pkgs[@]}" 2>/dev/null |
    awk '/^[^ ].*:$/ {p = substr($1, 1, length($1) - 1)} /^ *Candidate:/ {print p, $2}')
for p in "${pkgs[@]}"; do
    [ -n "${ver[$p]:-}" ] && [ "${ver[$p]}" != "(none)" ] ||
        die "no installable version of $p (apt lists missing? run apt-get update)"
done

# Hash of the inputs: packages and versions, then every file beside this
# script except the README (path, mode, content).
inputs_hash() {
    local p f
    {
        echo "test-guest inputs v1"
        for p in "${pkgs[@]}"; do echo "package $p ${ver[$p]}"; done
        (cd "$here" && find . -type f ! -name README.md -print | LC_ALL=C sort) | while read -r f; do
            echo "file $f $(stat -c %a "$here/$f") $(sha256sum <"$here/$f" | cut -c1-64)"
        done
    } | sha256sum | cut -c1-64
}
hash=$(inputs_hash)

if [ "${TEST_GUEST_FORCE:-0}" != 1 ] && [ -s "$outdir/vmlinuz" ] && [ -s "$outdir/initrd.gz" ] &&
    [ "$(cat "$outdir/inputs.sha256" 2>/dev/null)" = "$hash" ]; then
    log "up to date: $outdir ($kpkg ${ver[$kpkg]})"
    echo "$outdir" >&3
    exit 0
fi

start=$(date +%s)
log "building into $outdir ($kpkg ${ver[$kpkg]}, busybox-static ${ver[busybox-static]})"

work=$(mktemp -d "$parent/.test-guest-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Download the .debs into the cache (the kernel's is ~70 MB): each under its
# exact version, via a temporary directory so a cached file is always whole.
mkdir -p "$cache"
deb=()
for p in "${pkgs[@]}"; do
    f="$cache/${p}_${ver[$p]//:/%3a}_amd64.deb"
    if [ ! -s "$f" ]; then
        log "downloading $p ${ver[$p]}"
        dl=$(mktemp -d "$cache/.dl.XXXXXX")
        (cd "$dl" && apt-get -q -o APT::Sandbox::User=root download "$p=${ver[$p]}") >&2 ||
            {
                rm -rf "$dl"
                die "apt-get download $p=${ver[$p]} failed"
            }
        got=("$dl"/*.deb)
        [ "${#got[@]}" = 1 ] && [ -s "${got[0]}" ] || {
            rm -rf "$dl"
            die "apt-get download $p gave no single .deb"
        }
        # Older versions of the same package are of no further use.
        find "$cache" -maxdepth 1 -name "${p}_*.deb" ! -name "$(basename "$f")" -delete
        mv "${got[0]}" "$f"
        rm -rf "$dl"
    fi
    deb+=("$f")
done

root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib64,lib/x86_64-linux-gnu,dev,proc,sys,run,tmp,var/log,etc,www}
chmod 1777 "$root/tmp"

# Userland: busybox-static, and perl-base with its libraries for the echo
# servers (busybox has no inetd/udpsvd and its nc cannot do UDP).
ux=$work/user
mkdir -p "$ux"
for f in "${deb[@]:1}"; do dpkg -x "$f" "$ux"; done
pick() { # NAME DIR... -> first regular file NAME in ux/DIR
    local n=$1 d
    shift
    for d in "$@"; do
        [ -e "$ux/$d/$n" ] && {
            readlink -f "$ux/$d/$n"
            return 0
        }
    done
    die "$n not found in the extracted packages"
}
cp "$(pick busybox bin usr/bin)" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"
cp "$(pick perl usr/bin bin)" "$root/usr/bin/perl"
# ISC dhclient for DHCPv6 (Debian 12's busybox has no udhcpc6); it needs only
# libc. Its bash dhclient-script is replaced by etc/vmpod/dhclient6.script.
cp "$(pick dhclient sbin usr/sbin)" "$root/sbin/dhclient"
for l in "${libs[@]}"; do
    cp "$(pick "$l" lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu)" "$root/lib/x86_64-linux-gnu/$l"
done
ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$root/lib64/ld-linux-x86-64.so.2"
"$root/bin/busybox" --list-full | while read -r a; do
    [ -e "$root/$a" ] || [ -L "$root/$a" ] || ln -s /bin/busybox "$root/$a"
done

# Kernel and modules: extract only what is needed.
kx=$work/kernel
mkdir -p "$kx"
pats=('./boot/vmlinuz-*' '*/modules.builtin')
for m in "${modules[@]}"; do pats+=("*/$m.ko" "*/$m.ko.*"); done
# tar reports patterns that match nothing (a compression suffix not used, a
# module built in): what is really missing is checked below.
dpkg-deb --fsys-tarfile "${deb[0]}" | tar -x -C "$kx" --wildcards "${pats[@]}" 2>/dev/null || true
vmlinuz=$(find "$kx" -path '*/boot/vmlinuz-*' -type f | head -n 1)
[ -n "$vmlinuz" ] || die "no boot/vmlinuz-* in ${deb[0]}"
kver=${vmlinuz##*/vmlinuz-}
moddir=$root/lib/modules/$kver
mkdir -p "$moddir"
builtin=$(find "$kx" -name modules.builtin -path "*/$kver/*" | head -n 1)
: >"$moddir/load-order"
for m in "${modules[@]}"; do
    mapfile -t found < <(find "$kx" -path "*/$kver/*" \( -name "$m.ko" -o -name "$m.ko.*" \) -type f)
    if [ "${#found[@]}" = 0 ]; then
        # Built into the kernel (module names use - and _ interchangeably)?
        if [ -n "$builtin" ] && grep -Eq "/${m//_/[-_]}\.ko\$" "$builtin"; then
            log "module $m is built in"
            continue
        fi
        die "module $m not found in ${deb[0]}"
    fi
    [ "${#found[@]}" = 1 ] || die "module $m: several candidates: ${found[*]}"
    src=${found[0]}
    case "$src" in
    *.ko) cp "$src" "$moddir/$m.ko" ;;
    *.ko.xz) "$root/bin/busybox" xz -dc "$src" >"$moddir/$m.ko" ;;
    *.ko.gz) gzip -dc "$src" >"$moddir/$m.ko" ;;
    *.ko.zst) zstd -qdc "$src" >"$moddir/$m.ko" || die "zstd needed for $src" ;;
    *) die "module $m: unknown format $src" ;;
    esac
    echo "$m" >>"$moddir/load-order"
done

# The files of this directory.
cp -a "$here/rootfs/." "$root/"
cp "$here/init" "$root/init"
chmod 755 "$root/init" "$root/etc/vmpod/rc" "$root/etc/vmpod/udhcpc.script" \
    "$root/etc/vmpod/dhclient6.script" "$root/etc/acpi/PWRF/00000080" "$root/www/cgi-bin/fetch"
chmod 644 "$root/etc/inittab" "$root/etc/vmpod/functions.sh" "$root/usr/lib/vmpod/echo.pl" \
    "$root/etc/dhcp/dhclient6.conf"
mkdir -p "$root/var/lib/dhcp"
cat >"$root/etc/vmpod/versions" <<EOF
kernel $kver ($kpkg ${ver[$kpkg]})
$(for p in "${pkgs[@]:1}"; do echo "$p ${ver[$p]}"; done)
EOF
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
: >"$root/etc/resolv.conf"
mkdir -p "$root/root"

# The kernel opens /dev/console before /init runs: give it one.
mknod -m 600 "$root/dev/console" c 5 1 || log "warning: mknod dev/console failed (not root?); /init copes"
mknod -m 666 "$root/dev/null" c 1 3 || true

# Sanity checks of the packed userland, run on this (amd64) host.
"$root/bin/busybox" sh -n "$root/init"
for s in etc/vmpod/rc etc/vmpod/udhcpc.script etc/vmpod/dhclient6.script etc/acpi/PWRF/00000080 \
    www/cgi-bin/fetch etc/vmpod/functions.sh; do
    "$root/bin/busybox" sh -n "$root/$s" || die "syntax error in $s"
done
if [ "$(id -u)" = 0 ]; then
    out=$(chroot "$root" /usr/bin/perl -c /usr/lib/vmpod/echo.pl 2>&1) || true
    case "$out" in *"syntax OK"*) ;; *) die "perl in the initramfs does not run: $out" ;; esac
    out=$(chroot "$root" /sbin/dhclient --version 2>&1) || die "dhclient in the initramfs does not run: $out"
fi

log "packing the initramfs"
# Same inputs, same bytes: fixed mtimes, owners, inode numbers and order.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --owner=0:0 --reproducible --quiet) | gzip -9 -n >"$work/initrd.gz"

cp "$vmlinuz" "$work/vmlinuz"
cp "$root/etc/vmpod/versions" "$work/versions.txt"
rm -f "$outdir/inputs.sha256"
for f in vmlinuz initrd.gz versions.txt; do mv -f "$work/$f" "$outdir/$f"; done
echo "$hash" >"$outdir/inputs.sha256"
log "done in $(($(date +%s) - start)) s: kernel $kver, initrd $(du -k "$outdir/initrd.gz" | cut -f1) KiB"
echo "$outdir" >&3
