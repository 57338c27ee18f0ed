#!/usr/bin/env bash
# Builds the independent cosign verifier the signing tests use (ci/cosign-verify:
# sigstore-rs, pinned by its own Cargo.lock) into a project-local prefix, outside
# diskforge's dependency tree: $VERIFIERS/bin/cosign-verify. Debian's skopeo has its
# sigstore verification compiled out, so it cannot be the verifier.
# Idempotent: a stamp records the sources' digest; with it in place this does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

VERIFIERS=${DISKFORGE_VERIFIERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/diskforge/verifiers}
src=ci/cosign-verify
want=$(cat "$src/Cargo.toml" "$src/Cargo.lock" "$src/src/main.rs" | sha256sum | cut -d' ' -f1)
stamp="$VERIFIERS/installed.cosign-verify"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VERIFIERS/bin/cosign-verify" ]; then
  exit 0
fi
echo "==> building ci/cosign-verify (sigstore-rs) into $VERIFIERS"
mkdir -p "$VERIFIERS/bin"
# The dev profile (no debug info): it checks a handful of signatures, and builds in
# about half the time of a release build.
CARGO_TARGET_DIR="$VERIFIERS/target" cargo build --locked \
  --manifest-path "$src/Cargo.toml"
install -m 0755 "$VERIFIERS/target/debug/cosign-verify" "$VERIFIERS/bin/cosign-verify"
echo "$want" >"$stamp"
