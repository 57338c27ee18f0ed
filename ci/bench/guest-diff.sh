#!/usr/bin/env bash
# Did a change to the guest-side customization change what ends up in the guest?
# Compares two finished disks (e.g. `build --disk-only` of the same recipe before and
# after): the installed packages and versions (dpkg-query, or rpm -qa), every path
# of the root filesystem with its type, mode, owner, group and size (regular files;
# /var/log and caches included), and whether each package's files still match their recorded checksums
# (dpkg's md5sums, or rpm -Va). Prints the differences; exits 1 when there are any.
#
# Usage: ci/bench/guest-diff.sh BEFORE.qcow2 AFTER.qcow2
# Needs: libguestfs (guestfish); read-only, one appliance launch per disk.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 BEFORE.qcow2 AFTER.qcow2" >&2; exit 2; }
export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
# TCG unless told otherwise: a host whose KVM is broken hangs the appliance.
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS:-force_tcg}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

inventory() { # inventory DISK OUTDIR
  mkdir -p "$2"
  guestfish --ro -a "$1" -i <<'FISH' >"$2/all" 2>"$2/err" || { cat "$2/err" >&2; exit 1; }
sh "echo '### packages'; if command -v dpkg-query >/dev/null; then dpkg-query -W -f '${Package} ${Version} ${Architecture} ${db:Status-Abbrev}\n' | sort; else rpm -qa --qf '%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE} %{ARCH}\n' | sort; fi"
sh "echo '### files'; find / -xdev -printf '%y %#m %u %g %s %p\n' 2>/dev/null | awk '$1 != \"f\" { $5 = \"-\" } { print }' | sort -k6"
sh "echo '### checksums of package files'; if [ -d /var/lib/dpkg/info ]; then cd / && cat /var/lib/dpkg/info/*.md5sums | md5sum -c --quiet 2>&1 | sort || true; else rpm -Va 2>/dev/null | sort || true; fi"
FISH
  awk -v d="$2" '/^### /{ f = d "/" $2; next } { print > f }' "$2/all"
}

inventory "$1" "$work/before"
inventory "$2" "$work/after"
status=0
for part in packages files checksums; do
  n=$(wc -l <"$work/after/$part")
  if diff -u "$work/before/$part" "$work/after/$part" >"$work/$part.diff"; then
    echo "$part: identical ($n lines)"
  else
    echo "$part: DIFFERENT"; sed 1,2d "$work/$part.diff"; status=1
  fi
done
exit $status
