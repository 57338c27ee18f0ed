#!/usr/bin/env bash
# The web desktop image against the terminal-only demo, side by side in one run: both
# recipes built in full (no --incremental, no stage reused) from the same cached base,
# one after the other, ROUNDS times alternating. Prints a Markdown table of wall time,
# the appliance launch's time (the `guest` step), the layer's size and the packages the
# guest holds (its SBOM's count).
#
# Usage: [CACHE_DIR=DIR] [ROUNDS=N] ci/bench/desktop-vs-demo.sh
#   CACHE_DIR  diskforge's cache to use (default: the user's); it must hold the demo's
#              base (ci/demo.sh builds it once) and ttyd
#   ROUNDS     how many times each recipe is built (default 1)
#   RECIPES    the recipes under recipes/ to build (default: demo desktop)
# Needs: a release build (cargo build --release), qemu-img and libguestfs, the Debian
# mirror (the desktop's packages are installed from it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
diskforge=${DISKFORGE:-$repo/target/release/diskforge}
export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS:-force_tcg}
export DISKFORGE_LAB_PASSWORD=${DISKFORGE_LAB_PASSWORD:-bench-only-password}
export DISKFORGE_DESKTOP_PASSWORD=${DISKFORGE_DESKTOP_PASSWORD:-bench123}
rounds=${ROUNDS:-1}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cache_args=()
[ -z "${CACHE_DIR:-}" ] || cache_args=(--cache-dir "$CACHE_DIR")

build() { # build RECIPE ROUND: one full build into its own layout, its numbers on stdout
  local name=$1 round=$2 out="$work/$1-$2" s e
  mkdir -p "$out"
  s=$(date +%s.%N)
  "$diskforge" "${cache_args[@]}" --json-events build "$repo/recipes/$name.yaml" \
    --output "oci:$out/layout:latest" \
    2>"$out.log" >/dev/null || { echo "$name failed:" >&2; tail -20 "$out.log" >&2; exit 1; }
  e=$(date +%s.%N)
  python3 - "$name" "$s" "$e" "$out" "$out.log" <<'PY'
import json, os, sys
name, s, e, out, log = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
guest, packages = 0.0, 0
for line in open(log):
    try:
        ev = json.loads(line)
    except ValueError:
        continue
    if ev.get("event") == "stage-done" and ev.get("stage") == "guest":
        guest += ev.get("seconds", 0.0)
    if ev.get("event") == "attested":
        packages = ev.get("sbom_packages", 0)
blobs = os.path.join(out, "layout", "blobs", "sha256")
index = json.load(open(os.path.join(out, "layout", "index.json")))
manifest = json.load(open(os.path.join(blobs, index["manifests"][0]["digest"].split(":")[1])))
layer = manifest["layers"][0]
print(f"{name}\t{e - s:.1f}\t{guest:.1f}\t{layer['size']}\t{packages}")
PY
}

results=()
for r in $(seq 1 "$rounds"); do
  for name in ${RECIPES:-demo desktop}; do
    line=$(build "$name" "$r")
    echo "round $r: $line" >&2
    results+=("$r	$line")
  done
done

printf '%s\n' "${results[@]}" >"$work/results.tsv"
python3 - "$work/results.tsv" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print("| round | recipe | whole build (s) | guest launch (s) | layer (bytes, gzip) | packages in the guest (SBOM) |")
print("| ---: | --- | ---: | ---: | ---: | ---: |")
for r, name, wall, guest, layer, pk in rows:
    print(f"| {r} | {name} | {wall} | {guest} | {int(layer):,} | {pk} |")
by = {}
for r, name, wall, guest, layer, pk in rows:
    by.setdefault(r, {})[name] = (float(wall), int(layer))
pairs = [(r, d) for r, d in sorted(by.items()) if "demo" in d and "desktop" in d]
if pairs:
    print()
    print("| round | whole build: desktop / demo | layer: desktop / demo |")
    print("| ---: | ---: | ---: |")
    for r, d in pairs:
        print(f"| {r} | {d['desktop'][0] / d['demo'][0]:.2f} | {d['desktop'][1] / d['demo'][1]:.2f} |")
PY
