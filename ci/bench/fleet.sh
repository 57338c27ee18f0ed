#!/usr/bin/env bash
# Fleet benchmark: three recipes on one base, built as three sequential single builds
# (`diskforge build R` three times, one cache) versus one `diskforge build R1 R2 R3
# --jobs N` (a fresh cache), in one run, against the same loopback registry and a
# loopback HTTP server that serves the base and its SHA256SUMS. Prints a Markdown table.
#
# Usage: ci/bench/fleet.sh BASE.qcow2 [JOBS]
#   BASE.qcow2  a customizable base, e.g. target/test-rootfs/base-gpt-ext4.qcow2 (made
#               by `cargo test --test it -- fleet::`)
#   JOBS        --jobs of the fleet build (default 2)
# Needs: docker-registry, python3, libguestfs; $DISKFORGE (default target/release/diskforge).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
base=$(readlink -f "${1:?usage: fleet.sh BASE.qcow2 [JOBS]}")
jobs=${2:-2}
diskforge=${DISKFORGE:-$repo/target/release/diskforge}
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg
# shellcheck source=ci/bench/registry.sh
. "$here/registry.sh"
start_registry
work=$(mktemp -d)
http_pid=
cleanup() {
  stop_registry
  # python3 may be a shim (pyenv) whose child is the server: stop both.
  if [ -n "$http_pid" ]; then
    pkill -P "$http_pid" 2>/dev/null || true
    kill "$http_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# The base and its checksum file over HTTP, as an upstream publishes them.
mkdir -p "$work/www"
cp --reflink=auto "$base" "$work/www/base.qcow2"
(cd "$work/www" && sha256sum base.qcow2 >SHA256SUMS)
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "$port" >"$work/http.log" 2>&1 &
http_pid=$!
for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$port/SHA256SUMS" >/dev/null 2>&1 && break; sleep 0.2; done

# Three recipes, each one appliance launch: a file, a command, the default hygiene.
mkdir -p "$work/recipes"
for name in alpha beta gamma; do
  cat >"$work/recipes/$name.yaml" <<YAML
base:
  url: http://127.0.0.1:$port/base.qcow2
  checksum: {url: http://127.0.0.1:$port/SHA256SUMS}
customize:
  files:
    - {path: /etc/motd, content: "$name\n"}
  commands: ["echo $name > /etc/lab-name"]
output:
  tags: ["1-{arch}"]
YAML
done
recipes=("$work/recipes/alpha.yaml" "$work/recipes/beta.yaml" "$work/recipes/gamma.yaml")

now() { date +%s.%N; }
since() { python3 -c "import sys;print(f'{float(sys.argv[2])-float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
run() { # run LOG COMMAND...
  local log=$1; shift
  "$@" >"$log" 2>&1 || { echo "failed: $*" >&2; tail -30 "$log" >&2; exit 1; }
}

declare -a single
s=$(now)
for i in 0 1 2; do
  s1=$(now)
  run "$work/single-$i.log" "$diskforge" --cache-dir "$work/cache-single" build "${recipes[$i]}" \
    --output "docker://$REGISTRY/single/{name}:1-{arch}" --tls-verify=false
  single[i]=$(since "$s1")
  echo "single ${recipes[$i]##*/}: ${single[$i]}s" >&2
done
sequential=$(since "$s")

s=$(now)
run "$work/fleet.log" "$diskforge" --cache-dir "$work/cache-fleet" build "${recipes[@]}" --jobs "$jobs" \
  --output "docker://$REGISTRY/fleet/{name}:1-{arch}" --tls-verify=false --report "$work/report.json"
fleet=$(since "$s")
echo "fleet --jobs $jobs: ${fleet}s" >&2
base_gets=$(grep -c '"GET /base.qcow2' "$work/http.log" || true)

echo "Base: $(basename "$base"), $(stat -c %s "$base") bytes; $(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "| run | wall time (s) |"
echo "| --- | ---: |"
echo "| \`build alpha.yaml\` (downloads the base) | ${single[0]} |"
echo "| \`build beta.yaml\` (base cached) | ${single[1]} |"
echo "| \`build gamma.yaml\` (base cached) | ${single[2]} |"
echo "| **three sequential single builds** | **$sequential** |"
echo "| **\`build alpha.yaml beta.yaml gamma.yaml --jobs $jobs\`** | **$fleet** |"
echo
python3 -c "print(f'fleet / sequential: {$fleet/$sequential:.2f}')"
echo "base downloads over both runs: $base_gets (one per cache)"
python3 - "$work/report.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["recipes"]:
    print(f"fleet report: {r['name']} {r['status']} {r['duration_seconds']:.1f}s layer {r.get('layer_size')}")
PY
