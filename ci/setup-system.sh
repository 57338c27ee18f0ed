#!/usr/bin/env bash
# Installs everything diskforge and its test suite need on Debian 12: the tools it runs
# (qemu-img, libguestfs, QEMU, registry, verifiers), the keyrings the catalog's pinned
# keys are checked against, and the independent checkers the tests use (PyPI, npm).
# Idempotent: it checks what is there and installs only what is missing. Needs root
# (or sudo).
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Debian packages, by suite. qemu-system-x86 and libguestfs-tools must come from the
# same suite as the machine's qemu-utils (bookworm-backports on these machines),
# otherwise apt reports held broken packages; the keyrings are newer there too.
backports_pkgs=(qemu-utils qemu-system-x86 libguestfs-tools ubuntu-keyring distribution-gpg-keys)
main_pkgs=(
  linux-image-amd64 docker-registry skopeo umoci oci-image-tool buildah
  debootstrap mmdebstrap extlinux syslinux-common gdisk apache2-utils gnupg sqv
  xz-utils zstd curl openssl python3 python3-pip python3-venv python3-yaml python3-jsonschema
  time shellcheck jq
  # gitlab-ci-local (ci/setup-linters.sh) copies the checkout with rsync.
  rsync
  # push docker-archive: and containers-storage: are read back by podman's own client.
  podman
  # setpriv: QEMU started by `run` dies with diskforge (--pdeathsig).
  util-linux
  chromium chromium-driver
  # The layout zoo (tests/fixtures/layouts/): the partitioning tools the distributions'
  # image builders use, and what the appliance needs for vfat, xfs, btrfs and LVM.
  parted fdisk dosfstools xfsprogs btrfs-progs lvm2 libguestfs-xfs
  # UEFI boots (run --firmware uefi, uefi-secure-boot): OVMF with Microsoft's keys.
  ovmf
  # cloud-init's NoCloud seed for run --user-data (what KubeVirt makes it with).
  genisoimage
)

missing=()
for p in "${backports_pkgs[@]}" "${main_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  # Reuse the mirror of the existing Debian source for bookworm-backports.
  mirror=$( { sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null;
              sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p' /etc/apt/sources.list 2>/dev/null; } \
    | tr ' ' '\n' | grep -E '^https?://' | grep -v security | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb ${mirror%/} bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/diskforge-backports.list >/dev/null
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq -t bookworm-backports "${backports_pkgs[@]}" >/dev/null
  $SUDO apt-get install -y -qq "${main_pkgs[@]}" >/dev/null
fi

# PyPI: SPDX's own validator for the SBOMs, PyNaCl (libsodium) to check cosign-format
# keys, Selenium to drive Chromium against ttyd. The python3 on PATH may be Debian's
# (which refuses plain pip installs, PEP 668) or a user-installed one.
py_missing=()
command -v pyspdxtools >/dev/null || py_missing+=("spdx-tools==0.8.5")
python3 -c 'import nacl.secret' 2>/dev/null || py_missing+=("pynacl==1.6.2")
python3 -c 'import selenium' 2>/dev/null || py_missing+=("selenium==4.27.1")
if [ ${#py_missing[@]} -gt 0 ]; then
  python3 -m pip install -q --disable-pip-version-check "${py_missing[@]}" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages "${py_missing[@]}"
fi
