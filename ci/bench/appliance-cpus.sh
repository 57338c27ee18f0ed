#!/usr/bin/env bash
# One vCPU or two for a libguestfs appliance that unpacks a root tree, the work of
# diskforge's base builder and of the layout zoo's fixtures: mkfs ext4 on a 2 GiB disk,
# mount, tar-in TREE.tar, unmount. Alternating runs; wall time and the CPU time of the
# whole appliance (guestfish waits for its QEMU, so /usr/bin/time counts it).
#
#   ci/bench/appliance-cpus.sh TREE.tar [ROUNDS]
#
# TREE.tar: a root tree, e.g. the layout zoo's Debian tree made by
# `tests/fixtures/layouts/rootfs.sh TREE.tar`.
set -euo pipefail
tree=${1:?usage: $0 TREE.tar [ROUNDS]}
rounds=${2:-2}
export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS:-force_tcg}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "tree: $tree ($(du -h "$tree" | cut -f1)), $(nproc) cores, backend settings: $LIBGUESTFS_BACKEND_SETTINGS"
echo "| round | vCPUs | wall (s) | CPU (s) |"
echo "| ---: | ---: | ---: | ---: |"
for round in $(seq "$rounds"); do
  for cpus in 1 2; do
    rm -f "$work/disk.raw"
    truncate -s 2G "$work/disk.raw"
    /usr/bin/time -o "$work/time" -f "%e %U %S" guestfish --rw --format=raw -a "$work/disk.raw" <<FISH
set-smp $cpus
run
mkfs ext4 /dev/sda
mount /dev/sda /
tar-in $tree /
umount-all
FISH
    read -r wall user sys <"$work/time"
    echo "| $round | $cpus | $wall | $(echo "$user + $sys" | bc) |"
  done
done
