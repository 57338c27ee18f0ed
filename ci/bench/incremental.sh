#!/usr/bin/env bash
# Incremental rebuilds, side by side in one run: the demo recipe built in full, then
# with --incremental (which keeps the disk after growth and package installation, and
# the customized disk), then again after changing only the ttyd port, with nothing
# changed, after changing a file's content, a user's password, and after adding a
# user. Prints a Markdown table of wall times, appliance launches and the ratios to the
# full build; fails when a rebuild that should rewrite files on the host (or add the
# user there) did not.
#
# Usage: [CACHE_DIR=DIR] ci/bench/incremental.sh
#   CACHE_DIR  diskforge's cache to use (default: the user's); it must hold the demo's
#              base, and should hold no stage of the demo for the "first" row to mean it
# Needs: a release build (cargo build --release), the demo's base in the cache
# (ci/demo.sh builds it once), qemu-img and libguestfs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
diskforge=${DISKFORGE:-$repo/target/release/diskforge}
export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS:-force_tcg}
export DISKFORGE_LAB_PASSWORD=${DISKFORGE_LAB_PASSWORD:-bench-only-password}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The recipe beside a copy of the demo, so that editing the port leaves the repository
# alone; the base and ttyd come from the user's cache.
cp "$repo/recipes/demo.yaml" "$work/demo.yaml"

cache_args=()
[ -z "${CACHE_DIR:-}" ] || cache_args=(--cache-dir "$CACHE_DIR")

declare -A secs launches
run() { # run NAME OUTPUT_DIR ARGS...
  local name=$1 out=$2; shift 2
  local s e
  s=$(date +%s.%N)
  "$diskforge" "${cache_args[@]}" --json-events build "$work/demo.yaml" --output "oci:$work/$out:latest" "$@" \
    2>"$work/$name.log" >/dev/null || { echo "$name failed:" >&2; tail -20 "$work/$name.log" >&2; exit 1; }
  e=$(date +%s.%N)
  secs[$name]=$(python3 -c "import sys;print(f'{float(sys.argv[2])-float(sys.argv[1]):.1f}')" "$s" "$e")
  launches[$name]=$(python3 - "$work/$name.log" <<'PY'
import json, sys
n = 0
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("event") == "appliance_launches":
        n += e.get("count", 0)
print(n)
PY
)
  echo "$name: ${secs[$name]} s, ${launches[$name]} appliance launch(es)" >&2
}

# Each build writes its own layout (a layout holding the same build key is up to date).
run full out-full
run incremental_first out-first --incremental
sed -i 's/^  port: 7681$/  port: 7682/' "$work/demo.yaml"
grep -q '^  port: 7682$' "$work/demo.yaml" || { echo "the demo's ttyd port line moved" >&2; exit 1; }
run port_changed out-port --incremental
run unchanged out-port --incremental
grep -q '"up_to_date"\|up to date' "$work/unchanged.log" || {
  echo "the unchanged rebuild was not up to date" >&2
  exit 1
}
# A file's content (the message of the day).
sed -i 's/^        Welcome to the diskforge demo lab\.$/        Welcome to the rebuilt diskforge demo lab./' "$work/demo.yaml"
grep -q 'Welcome to the rebuilt' "$work/demo.yaml" || { echo "the demo's motd line moved" >&2; exit 1; }
run file_changed out-file --incremental
# A user's password: a secret, which the build key leaves out, so --force.
DISKFORGE_LAB_PASSWORD=$DISKFORGE_LAB_PASSWORD-2 run password_changed out-password --incremental --force
# A new user appended: added on the host (Debian's useradd followed), no appliance.
python3 - "$work/demo.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
anchor = "  files:\n"
assert anchor in s, "the demo's files section moved"
s = s.replace(anchor, "    - name: guest\n      shell: /bin/sh\n" + anchor, 1)
open(p, "w").write(s)
PY
run user_added out-user --incremental
for n in port_changed file_changed password_changed user_added; do
  grep -q '"event":"patched"' "$work/$n.log" || { echo "$n did not rewrite files on the host" >&2; exit 1; }
done

ratio() { python3 -c "import sys;print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
cat <<EOF
| build of recipes/demo.yaml | wall time (s) | appliance launches | vs full build |
| --- | ---: | ---: | ---: |
| full (no --incremental) | ${secs[full]} | ${launches[full]} | 1.00 |
| --incremental, first (keeps the stage) | ${secs[incremental_first]} | ${launches[incremental_first]} | $(ratio "${secs[incremental_first]}" "${secs[full]}") |
| --incremental, ttyd port changed | ${secs[port_changed]} | ${launches[port_changed]} | **$(ratio "${secs[port_changed]}" "${secs[full]}")** |
| --incremental, nothing changed | ${secs[unchanged]} | ${launches[unchanged]} | $(ratio "${secs[unchanged]}" "${secs[full]}") |
| --incremental, a file's content changed | ${secs[file_changed]} | ${launches[file_changed]} | **$(ratio "${secs[file_changed]}" "${secs[full]}")** |
| --incremental --force, a user's password changed | ${secs[password_changed]} | ${launches[password_changed]} | **$(ratio "${secs[password_changed]}" "${secs[full]}")** |
| --incremental, a user added | ${secs[user_added]} | ${launches[user_added]} | **$(ratio "${secs[user_added]}" "${secs[full]}")** |
EOF
