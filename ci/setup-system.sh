#!/usr/bin/env bash
# Installs the system packages diskforge and its test suite need on Debian 12.
# Idempotent: re-running it installs nothing new. Needs root (or sudo).
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

stamp_dir="${XDG_CACHE_HOME:-$HOME/.cache}/diskforge"
stamp="$stamp_dir/setup-system.v1"
if [ -f "$stamp" ] && command -v guestfish >/dev/null && command -v qemu-system-x86_64 >/dev/null \
   && command -v skopeo >/dev/null && command -v docker-registry >/dev/null; then
  exit 0
fi

# qemu-system-x86 and libguestfs-tools must come from the same suite as the
# machine's qemu-utils (bookworm-backports on these machines), otherwise apt
# reports held broken packages. Reuse the mirror of the existing Debian source.
mirror=$( { sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null;
            sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p' /etc/apt/sources.list 2>/dev/null; } \
  | tr ' ' '\n' | grep -E '^https?://' | grep -v security | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb ${mirror%/} bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/diskforge-backports.list >/dev/null
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq -t bookworm-backports \
  qemu-utils qemu-system-x86 libguestfs-tools >/dev/null
$SUDO apt-get install -y -qq \
  linux-image-amd64 docker-registry skopeo umoci oci-image-tool buildah \
  debootstrap mmdebstrap extlinux syslinux-common apache2-utils gnupg sqv \
  xz-utils zstd curl python3 time >/dev/null

mkdir -p "$stamp_dir"
touch "$stamp"
