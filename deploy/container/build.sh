#!/usr/bin/env bash
# Builds vmpod's container image offline, the way this machine allows (see
# ../../README.md, "Deploying to Kubernetes"):
#
#   deploy/container/build.sh [--tag IMAGE] [--binary PATH] [--locked] [--update-lock]
#
# 1. The base: no registry is reachable, so a Debian 12 (minbase) root file
#    system is made with debootstrap from Debian's packages, cached as a
#    tarball under target/container/, and `podman import`ed under the name
#    the Containerfile's FROM uses (docker.io/library/debian:12). Where a
#    registry is reachable the same Containerfile builds from the real image.
# 2. vmpod: built on the host with `cargo build --release --locked` (Debian's
#    rustc is too old for edition 2024), or the binary --binary names (the
#    tests pass the one they test), staged as target/container/vmpod, which the
#    Containerfile copies. The host is Debian 12 too, so the binary links the
#    same glibc and libvirt0 the image has.
# 3. The image: `podman build --isolation chroot` (no container engine).
# 4. The package list: every package of the built image with its version goes
#    to target/container/packages.lock; it is compared with the recorded
#    deploy/container/packages.lock. --update-lock records the new list;
#    --locked installs exactly the recorded versions (the reproducible build,
#    as long as Debian's mirrors still serve them).
#
# Prints the image name as the last line on stdout; the rest goes to stderr.
# Needs root, podman, debootstrap, cargo. Environment: VMPOD_BASE_FORCE=1
# rebuilds the base even when cached.
set -euo pipefail

exec 3>&1 1>&2 # stdout is for the result only

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=$repo/target/container
tag=localhost/vmpod:dev
binary=
locked=0
update_lock=0
while [ $# -gt 0 ]; do
    case "$1" in
    --tag) tag=$2; shift 2 ;;
    --binary) binary=$(realpath "$2"); shift 2 ;;
    --locked) locked=1; shift ;;
    --update-lock) update_lock=1; shift ;;
    *) echo "usage: build.sh [--tag IMAGE] [--binary PATH] [--locked] [--update-lock]" >&2; exit 2 ;;
    esac
done

log() { echo "container/build: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, podman)"
for c in podman:podman debootstrap:debootstrap cargo:cargo; do
    command -v "${c%%:*}" >/dev/null || die "${c%%:*} is missing (install ${c#*:}; see deploy/local/install-deps.sh)"
done

# The name in the Containerfile's first FROM.
base_image=$(awk 'toupper($1) == "FROM" {print $2; exit}' "$repo/Containerfile")
[ -n "$base_image" ] || die "no FROM in $repo/Containerfile"
suite=bookworm
mirror=http://deb.debian.org/debian
mkdir -p "$cache"

# One build at a time: the test and a user may run this together.
exec 9>"$cache/.build.lock"
flock 9

# The base recipe; its hash names the cached tarball and labels the image,
# so a changed recipe rebuilds both.
base_recipe="debootstrap --variant=minbase $suite $mirror; sources: $suite $suite-updates $suite-security; v1"
base_hash=$(echo "$base_recipe" | sha256sum | cut -c1-16)
base_tar=$cache/debian-12-minbase-$base_hash.tar

if [ "${VMPOD_BASE_FORCE:-0}" = 1 ] || [ ! -s "$base_tar" ]; then
    rootfs=$cache/base-rootfs
    rm -rf "$rootfs"
    log "debootstrap $suite into $rootfs (a few minutes, once)"
    debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $cache/debootstrap.log"
    # What the official debian:12 image has: updates and security too, and no
    # caches in the layer.
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
EOF
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
    tar --numeric-owner --xattrs -C "$rootfs" -cf "$base_tar.tmp" .
    mv "$base_tar.tmp" "$base_tar"
    rm -rf "$rootfs"
fi

if [ "$(podman image inspect --format '{{index .Labels "vmpod.base"}}' "$base_image" 2>/dev/null)" != "$base_hash" ]; then
    log "podman import $base_tar as $base_image"
    podman import --change "LABEL vmpod.base=$base_hash" --change 'CMD ["bash"]' \
        "$base_tar" "$base_image" >/dev/null
fi

if [ -z "$binary" ]; then
    log "cargo build --release --locked"
    (cd "$repo" && cargo build --release --locked --bin vmpod) || die "cargo build failed"
    binary=$repo/target/release/vmpod
fi
[ -x "$binary" ] || die "$binary is not an executable"
cp "$binary" "$cache/vmpod.tmp" && mv "$cache/vmpod.tmp" "$cache/vmpod"

lock=$here/packages.lock
build_args=(--build-arg "VMPOD_PACKAGES_LOCKED=$locked")
[ "$locked" = 0 ] || [ -s "$lock" ] || die "--locked needs $lock (run with --update-lock first)"
log "podman build $tag"
previous=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
podman build --isolation chroot --pull=never -f "$repo/Containerfile" -t "$tag" \
    "${build_args[@]}" "$repo" >"$cache/build.log" 2>&1 ||
    die "podman build failed; see $cache/build.log (last lines: $(tail -5 "$cache/build.log"))"

# Each test build makes a new image (a new binary layer): drop the one it replaced, unless a
# container still uses it.
current=$(podman image inspect --format '{{.Id}}' "$tag")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
fi

# The list of the built image, read from its dpkg database without running it.
mnt=$(podman image mount "$tag")
dpkg-query --admindir="$mnt/var/lib/dpkg" -W -f '${db:Status-Abbrev} ${Package}=${Version}\n' |
    awk '$1 == "ii" {print $2}' | LC_ALL=C sort >"$cache/packages.lock"
podman image unmount "$tag" >/dev/null
if [ "$update_lock" = 1 ]; then
    {
        echo "# Every Debian package of vmpod's image, as built by deploy/container/build.sh --update-lock."
        echo "# build.sh --locked installs exactly these versions."
        cat "$cache/packages.lock"
    } >"$lock"
    log "recorded $(grep -vc '^#' "$lock") packages in $lock"
elif ! diff -u <(grep -v '^#' "$lock" 2>/dev/null) "$cache/packages.lock" >"$cache/packages.diff"; then
    log "warning: the image's packages differ from $lock (Debian updates since it was recorded):"
    head -40 "$cache/packages.diff" >&2
    log "run build.sh --update-lock to record them, or --locked to build the recorded ones"
fi

echo "$tag" >&3
