#!/usr/bin/env bash
# The main job on the embedded default: installs what it needs, builds diskforge, then
# builds the demo recipe (recipes/demo.yaml) into the local OCI layout out/demo and prints
# the image, its digest and size, and how to boot it. Safe to re-run: the base image and
# downloads are cached, so a second run only redoes what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash ci/setup-system.sh
bash ci/setup-rust.sh

echo "==> building diskforge (release)"
cargo build --release --locked --quiet
diskforge=$PWD/target/release/diskforge

# The demo's lab user gets a password from a file that never enters the repository.
secret_dir=${DISKFORGE_DEMO_SECRETS:-$PWD/.work}
mkdir -p "$secret_dir"
pwfile=$secret_dir/lab-password
if [ ! -s "$pwfile" ]; then
  (umask 077; head -c 12 /dev/urandom | base64 | tr -d '/+=' >"$pwfile")
fi
chmod 600 "$pwfile"
DISKFORGE_LAB_PASSWORD=$(cat "$pwfile")
export DISKFORGE_LAB_PASSWORD

echo "==> diskforge build recipes/demo.yaml --output oci:out/demo:latest"
"$diskforge" build recipes/demo.yaml --output oci:out/demo:latest "$@"

cat <<MSG

The demo image is in the OCI layout out/demo (tag latest).
  Boot it locally:   $diskforge run oci:out/demo:latest
  Check it boots:    $diskforge run oci:out/demo:latest --check
  Inspect it:        $diskforge inspect oci:out/demo:latest
  Log in as:         lab / the password in $pwfile
MSG
