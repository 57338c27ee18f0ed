#!/usr/bin/env bash
# Side-by-side: packing and pushing one qcow2 with `diskforge pack` (gzip and zstd)
# versus buildah (`FROM scratch` + `ADD --chown=107:107`, then `buildah push`), in one
# run, to the same loopback registry. Prints a Markdown table: wall time, CPU time (user +
# system: what a run costs on a machine shared with other work), peak RSS (from
# /usr/bin/time -v), layer size, and speed against buildah (buildah's time / the tool's).
#
# Usage: [GZIP_LEVELS="4 6"] [DEST=registry|layout] [ORDER=diskforge|buildah] \
#          ci/bench/pack-vs-buildah.sh DISK.qcow2
# GZIP_LEVELS: gzip levels to run diskforge at (default: its default level only).
# DEST: registry (default: pack + push to a loopback registry, against buildah bud +
#   buildah push) or layout (pack into a local OCI layout, against buildah bud + buildah
#   push oci:DIR, which compresses the same way).
# ORDER: which tool runs first (default diskforge); alternate it between repeated runs.
# diskforge runs with a cache of its own in the work directory: every run measures a
# first pack of the disk, as a build's new disk is.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
disk=$(readlink -f "${1:?usage: pack-vs-buildah.sh DISK.qcow2}")
diskforge=${DISKFORGE:-$repo/target/release/diskforge}
# shellcheck source=ci/bench/registry.sh
. "$here/registry.sh"
DEST=${DEST:-registry}
ORDER=${ORDER:-diskforge}
# Sum of the layer sizes in an image's manifest (skopeo in Debian 12 lacks LayersData).
layer_size() {
  if [ "$DEST" = layout ]; then
    skopeo inspect --raw "oci:$work/$1" \
      | python3 -c 'import json,sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))'
  else
    skopeo inspect --raw --tls-verify=false "docker://$REGISTRY/$1" \
      | python3 -c 'import json,sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))'
  fi
}
# Where a tool writes image NAME: an OCI layout in the work dir, or the registry.
dest() {
  if [ "$DEST" = layout ]; then echo "oci:$work/$1"; else echo "docker://$REGISTRY/$1"; fi
}
start_registry
work=$(mktemp -d)
broot="$work/buildah-root"; brun="$work/buildah-run"
trap 'stop_registry; buildah --root "$broot" --runroot "$brun" --storage-driver vfs rm --all >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

measure() { # measure NAME COMMAND... -> sets secs[NAME], rss[NAME] (KiB)
  local name=$1; shift
  /usr/bin/time -v -o "$work/$name.time" "$@" >"$work/$name.log" 2>&1 \
    || { echo "$name failed:" >&2; tail -20 "$work/$name.log" >&2; exit 1; }
  secs[$name]=$(awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; printf "%.2f", s}' "$work/$name.time")
  rss[$name]=$(awk -F': ' '/Maximum resident set size/{print $2}' "$work/$name.time")
  cpu[$name]=$(awk -F': ' '/User time/{u=$2} /System time/{s=$2} END{printf "%.1f", u+s}' "$work/$name.time")
}
declare -A secs rss size cpu

run_diskforge() {
  for level in ${GZIP_LEVELS:-default}; do
    k=diskforge_gzip; lvl=()
    if [ "$level" != default ]; then k=diskforge_gzip$level; lvl=(--compression-level "$level"); fi
    measure "$k" "$diskforge" --cache-dir "$work/cache-$k" pack "$disk" "${lvl[@]}" --output "$(dest "bench/df-$k:1")" --tls-verify=false --work-dir "$work"
    size[$k]=$(layer_size "bench/df-$k:1")
    runs+=("$k")
  done
  measure diskforge_zstd "$diskforge" --cache-dir "$work/cache-zstd" pack "$disk" --compression zstd --output "$(dest bench/df-zstd:1)" --tls-verify=false --work-dir "$work"
  size[diskforge_zstd]=$(layer_size bench/df-zstd:1)
  runs+=(diskforge_zstd)
}

run_buildah() {
  mkdir -p "$work/ctx"
  cp --reflink=auto "$disk" "$work/ctx/disk.qcow2"
  printf 'FROM scratch\nADD --chown=107:107 disk.qcow2 /disk/\n' >"$work/ctx/Containerfile"
  B=(buildah --root "$broot" --runroot "$brun" --storage-driver vfs)
  measure buildah_bud "${B[@]}" bud --isolation chroot -q -t localhost/bench:1 "$work/ctx"
  mkdir -p "$work/bench"
  measure buildah_push "${B[@]}" push --tls-verify=false localhost/bench:1 "$(dest bench/buildah:1)"
  size[buildah]=$(layer_size bench/buildah:1)
}

runs=()
if [ "$ORDER" = buildah ]; then run_buildah; run_diskforge; else run_diskforge; run_buildah; fi
b_secs=$(python3 -c "print(round(${secs[buildah_bud]}+${secs[buildah_push]},1))")
b_rss=$(( rss[buildah_bud] > rss[buildah_push] ? rss[buildah_bud] : rss[buildah_push] ))
b_cpu=$(python3 -c "print(round(${cpu[buildah_bud]}+${cpu[buildah_push]},1))")

echo "Disk: $(basename "$disk"), $(stat -c %s "$disk") bytes; into: $DEST; first: $ORDER; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg) at the end."
echo
echo "| tool | pack+push (s) | CPU (s) | peak RSS (MiB) | layer (bytes) | speed vs buildah | CPU vs buildah |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
echo "| buildah bud + push (gzip) | $b_secs | $b_cpu | $((b_rss/1024)) | ${size[buildah]} | 1.00× | 1.00× |"
for k in "${runs[@]}"; do
  python3 -c "print(f'| ${k/_/ pack } | ${secs[$k]} | ${cpu[$k]} | $((rss[$k]/1024)) | ${size[$k]} | {$b_secs/${secs[$k]}:.2f}× | {$b_cpu/${cpu[$k]}:.2f}× |')"
done
