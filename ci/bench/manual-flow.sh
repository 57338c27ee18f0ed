#!/usr/bin/env bash
# Side-by-side benchmark: the manual containerDisk flow versus `diskforge build`, on the
# same base image, in one run. Prints a Markdown table of per-step times and ratios.
#
# Usage: ci/bench/manual-flow.sh BASE.qcow2 [SIZE]
#   BASE.qcow2  a bootable base (e.g. the cached debian-12-minimal build)
#   SIZE        target size for the manual flow (default 4G, the demo recipe's size)
# Needs: qemu-img, virt-resize, virt-customize, buildah, docker-registry, the ttyd binary
# (taken from the diskforge cache after a demo build, or $TTYD_BIN).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
base=${1:?usage: manual-flow.sh BASE.qcow2 [SIZE]}
size=${2:-4G}
diskforge=${DISKFORGE:-$repo/target/release/diskforge}
ttyd_bin=${TTYD_BIN:?set TTYD_BIN to a ttyd 1.7.7 static binary}
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg
# shellcheck source=ci/bench/registry.sh
. "$here/registry.sh"
# Sum of the layer sizes in an image's manifest (skopeo in Debian 12 lacks LayersData).
layer_size() {
  skopeo inspect --raw --tls-verify=false "docker://$REGISTRY/$1" \
    | python3 -c 'import json,sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))'
}
start_registry
work=$(mktemp -d)
trap 'stop_registry; rm -rf "$work"; buildah rm --all >/dev/null 2>&1 || true' EXIT

declare -A t
step() { # step NAME COMMAND...
  local name=$1; shift
  local s; s=$(date +%s.%N)
  "$@" >"$work/$name.log" 2>&1 || { echo "step $name failed:" >&2; tail -20 "$work/$name.log" >&2; exit 1; }
  t[$name]=$(python3 -c "import sys;print(f'{float(sys.argv[2])-float(sys.argv[1]):.1f}')" "$s" "$(date +%s.%N)")
  echo "$name: ${t[$name]}s" >&2
}

# --- the manual flow -------------------------------------------------------------
cp "$base" "$work/base.qcow2"
step m_resize qemu-img create -q -f qcow2 "$work/manual.qcow2" "$size"
step m_virt_resize virt-resize --quiet --expand /dev/sda1 "$work/base.qcow2" "$work/manual.qcow2"
printf 'lab-password\n' >"$work/pw"
step m_customize_pkgs virt-customize -q -a "$work/manual.qcow2" --install tmux,htop \
  --run-command 'useradd -m -s /bin/bash lab' --password lab:file:"$work/pw" \
  --write /etc/motd:'Welcome to the diskforge demo lab'
cat >"$work/ttyd.service" <<UNIT
[Unit]
Description=ttyd
After=network-online.target
Wants=network-online.target
[Service]
ExecStart=/usr/local/bin/ttyd -p 7681 -W login
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
step m_customize_ttyd virt-customize -q -a "$work/manual.qcow2" \
  --upload "$ttyd_bin":/usr/local/bin/ttyd --chmod 0755:/usr/local/bin/ttyd \
  --upload "$work/ttyd.service":/etc/systemd/system/ttyd.service \
  --link /etc/systemd/system/ttyd.service:/etc/systemd/system/multi-user.target.wants/ttyd.service \
  --truncate /etc/machine-id
mkdir -p "$work/ctx"
step m_flatten qemu-img convert -O qcow2 "$work/manual.qcow2" "$work/ctx/disk.qcow2"
printf 'FROM scratch\nADD --chown=107:107 disk.qcow2 /disk/\n' >"$work/ctx/Containerfile"
step m_buildah_bud buildah --storage-driver vfs bud --isolation chroot -q -t "localhost/manual:1" "$work/ctx"
step m_buildah_push buildah --storage-driver vfs push --tls-verify=false "localhost/manual:1" "docker://$REGISTRY/bench/manual:1"
m_layer=$(layer_size bench/manual:1)

# --- diskforge ---------------------------------------------------------------------
events="$work/diskforge-events.jsonl"
# The base is already in diskforge's cache (built by an earlier demo run), as the manual
# flow is handed BASE.qcow2: both start from a ready base.
d_start=$(date +%s.%N)
DISKFORGE_LAB_PASSWORD=lab-password "$diskforge" --json-events build "$repo/recipes/demo.yaml" \
  --output "docker://$REGISTRY/bench/diskforge:1" --tls-verify=false 2>"$events" >/dev/null \
  || { echo "diskforge build failed:" >&2; tail -20 "$events" >&2; exit 1; }
t[d_total]=$(python3 -c "import sys;print(f'{float(sys.argv[2])-float(sys.argv[1]):.1f}')" "$d_start" "$(date +%s.%N)")
d_layer=$(layer_size bench/diskforge:1)

m_total=0
for k in "${!t[@]}"; do case $k in m_*) m_total=$(python3 -c "print(round($m_total+${t[$k]},1))");; esac; done

echo
echo "| step | manual flow (s) |"
echo "| --- | ---: |"
for k in m_resize m_virt_resize m_customize_pkgs m_customize_ttyd m_flatten m_buildah_bud m_buildah_push; do
  echo "| ${k#m_} | ${t[$k]} |"
done
echo "| **total** | **$m_total** |"
echo
echo "diskforge stages (from --json-events):"
python3 - "$events" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try: e = json.loads(line)
    except ValueError: continue
    if e.get("event") == "stage-done":
        print(f"| {e['stage']} | {e['seconds']:.1f} |")
PY
echo
echo "| | manual | diskforge | ratio (diskforge/manual) |"
echo "| --- | ---: | ---: | ---: |"
python3 -c "print(f'| total time (s) | $m_total | ${t[d_total]} | {${t[d_total]}/$m_total:.2f} |')"
python3 -c "print(f'| layer size (bytes) | $m_layer | $d_layer | {$d_layer/$m_layer:.2f} |')"
