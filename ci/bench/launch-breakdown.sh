#!/usr/bin/env bash
# Where a build's time goes, step by step: builds a recipe (default: the demo) with
# debug logging and JSON events, then sums the time of every external command by
# what it does — the appliance's start, inspection and mounts, growth, customization,
# unmount and shutdown, and the host-side qemu-img and packing — and prints a Markdown
# table beside the build's own stage timings, then the guest script's stages (its
# `guest-stage` events: each recipe step, apt-get update, download, dpkg).
#
# Usage: [CACHE_DIR=DIR] ci/bench/launch-breakdown.sh [RECIPE]
# Needs: a release build (cargo build --release), qemu-img and libguestfs; the recipe's
# base is fetched into the cache on the first run (run twice to leave the download out).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
diskforge=${DISKFORGE:-$repo/target/release/diskforge}
recipe=$(readlink -f "${1:-$repo/recipes/demo.yaml}")
export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS:-force_tcg}
export DISKFORGE_LAB_PASSWORD=${DISKFORGE_LAB_PASSWORD:-bench-only-password}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cache_args=()
[ -z "${CACHE_DIR:-}" ] || cache_args=(--cache-dir "$CACHE_DIR")

start=$(date +%s.%N)
"$diskforge" "${cache_args[@]}" -v --json-events build "$recipe" --force \
  --output "oci:$work/out:latest" 2>"$work/build.log" >/dev/null ||
  { echo "build failed:" >&2; tail -30 "$work/build.log" >&2; exit 1; }
end=$(date +%s.%N)

python3 - "$work/build.log" "$start" "$end" <<'PY'
import json, re, sys
log, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
# What each external command is for, by the description diskforge logs for it.
groups = [
    ("appliance start (guestfish --listen, run)", r"^(starting the libguestfs server|guestfish run)$"),
    ("inspection (devices, blkid, fstab or inspect-os)", r"^guestfish (list-devices|list-partitions|lvs|blockdev-set\w+|blockdev-getsize64|blkid|umount|inspect-\S+|vfs-type)$"),
    ("mounts and sizes", r"^guestfish (mount\S*|is-dir|mkdir-p|statvfs)$"),
    ("growth (partition, filesystem)", r"^guestfish (part-\S+|resize2fs\S*|e2fsck\S*|xfs-growfs|btrfs-\S+|pvs|pvresize\S*|is-lv|lvresize\S*|blockdev-getsz)$"),
    ("customization (staging tmpfs, files, script, package list)", r"^guestfish (debug|tar-in|upload|sh|cat|rmdir|is-file|download)$"),
    ("free-space zeroing", r"^guestfish zero-free-space$"),
    ("unmount and shutdown", r"^(guestfish (umount-all|sync|shutdown)|stopping the libguestfs server)$"),
    ("host commands (qemu-img overlays, resize, flatten, checks)", r"^(reading image info|checking|creating|resizing|converting|flattening)"),
]
rest = "other commands"
totals, counts, unknown, each = {}, {}, {}, {}
stages = []
guest = {}
line_re = re.compile(r"^\s*DEBUG (.*) finished status=.* elapsed_ms=(\d+)$")
for raw in open(log, encoding="utf-8", errors="replace"):
    raw = raw.rstrip("\n")
    if raw.startswith("{"):
        try:
            e = json.loads(raw)
        except ValueError:
            continue
        if e.get("event") == "stage-done":
            stages.append((e.get("stage"), e.get("seconds", 0.0)))
        if e.get("event") == "guest-stage":
            name = e.get("stage", "")
            guest[name] = guest.get(name, 0.0) + e.get("seconds", 0.0)
        continue
    m = line_re.search(raw)
    if not m:
        continue
    desc, ms = m.group(1).strip(), int(m.group(2))
    name = next((g for g, rx in groups if re.search(rx, desc)), rest)
    if name == rest:
        short = " ".join(w for w in desc.split() if "/" not in w)
        unknown[short] = unknown.get(short, 0) + ms
    totals[name] = totals.get(name, 0) + ms
    key = " ".join(w for w in desc.split() if "/" not in w)
    each[key] = each.get(key, 0) + ms
    counts[name] = counts.get(name, 0) + 1
wall = end - start
print(f"build wall time: {wall:.1f} s\n")
print("| what | commands | seconds | share of the build |")
print("| --- | ---: | ---: | ---: |")
for name, _ in groups + [(rest, None)]:
    if name in totals:
        s = totals[name] / 1000
        print(f"| {name} | {counts[name]} | {s:.1f} | {100 * s / wall:.0f}% |")
measured = sum(totals.values()) / 1000
print(f"| in-process work (download checks, tar, compression, hashing) | | {wall - measured:.1f} | {100 * (wall - measured) / wall:.0f}% |")
if unknown:
    print("\nother commands: " + ", ".join(f"{k} {v / 1000:.1f}s" for k, v in sorted(unknown.items(), key=lambda kv: -kv[1])[:8]))
print("\nslowest commands: " + ", ".join(f"{k} {v / 1000:.1f}s" for k, v in sorted(each.items(), key=lambda kv: -kv[1])[:8]))
print("\nstages as the build reports them: " + ", ".join(f"{n} {s:.1f}s" for n, s in stages))
if guest:
    # The guest script's own marks (guest-stage events): where the customization goes.
    total = sum(guest.values())
    print("\n| inside the guest | seconds | share of the customization |")
    print("| --- | ---: | ---: |")
    for name, s in guest.items():
        print(f"| {name} | {s:.1f} | {100 * s / total if total else 0:.0f}% |")
    print(f"| **all marked stages** | **{total:.1f}** | |")
PY
