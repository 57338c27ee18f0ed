#!/usr/bin/env bash
# Makes sure the Rust toolchain has the components the checks use. Idempotent.
set -euo pipefail
if ! command -v cargo >/dev/null; then
  echo "cargo is not installed: install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
    rustup component add "$component"
  fi
done
