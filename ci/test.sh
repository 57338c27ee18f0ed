#!/usr/bin/env bash
# The whole test suite: installs what it needs, then formatting, lints and every test
# tier (unit, integration with real tools, end to end). Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

bash ci/setup-system.sh
bash ci/setup-rust.sh
# The linters tests/it/ci_examples.rs runs on the pipeline examples in ci/examples/.
bash ci/setup-linters.sh
# The independent cosign verifier tests/it/provenance_sign.rs uses (sigstore-rs).
bash ci/setup-verifiers.sh

export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
# Tests that need a tool fail (never skip) when CI=true.
export CI=${CI:-true}

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --locked --all-targets --no-run
# The integration suite's binary (cargo prints where it put it): every tests/it module.
it=$(cargo test --locked --test it --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "it":
        print(m["executable"])')
[ -x "$it" ] || { echo "no integration test binary (tests/it) was built" >&2; exit 1; }

# Beside the main run go what keeps one core busy for minutes while the other idles: the
# end-to-end demo, the UEFI Secure Boot boot, the container image, the SELinux guest,
# the web desktop and the OpenRC guest (one appliance or VM at a time, package
# downloads), in three chains of modules run one after the other, balanced by their
# measured times (cold, beside everything else: e2e_demo 711 s, container_image 906 s,
# e2e_uefi 1224 s, desktop 735 s, openrc_guest 956 s, selinux_guest 586 s);
# and the throttled 300 MB push, which waits on the network (ignored unless asked).
chains=("e2e_demo container_image" "e2e_uefi desktop" "openrc_guest selinux_guest")
beside=()
beside_logs=()
beside_pids=()
for chain in "${chains[@]}"; do
    log=$(mktemp)
    (
        set +e
        rc=0
        for m in $chain; do
            echo "==> beside the main run: tests/it/$m.rs"
            "$it" "$m::" || rc=1
        done
        exit "$rc"
    ) >"$log" 2>&1 &
    beside_pids+=($!)
    beside_logs+=("$log")
    # shellcheck disable=SC2206 # the chain is a list of module names
    beside+=($chain)
done
slow_log=$(mktemp)
"$it" registry_push:: --ignored --test-threads 1 >"$slow_log" 2>&1 &
slow_pid=$!
skips=()
for m in "${beside[@]}"; do skips+=(--skip "$m::"); done
status=0
# The unit tests run whole: a --skip matches anywhere in a name (`desktop::` would skip
# the lib's vm::desktop tests too), so the modules run beside are skipped in `it` only.
cargo test --locked --lib --bins --no-fail-fast || status=$?
cargo test --locked --test it --no-fail-fast -- "${skips[@]}" || status=$?
failed=()
for i in "${!chains[@]}"; do
    wait "${beside_pids[$i]}" || failed+=("${chains[$i]}")
    echo "==> beside it: ${chains[$i]}"
    cat "${beside_logs[$i]}"
    rm -f "${beside_logs[$i]}"
done
wait "$slow_pid" || failed+=("registry_push:: --ignored")
echo "==> beside it: registry_push:: --ignored"
cat "$slow_log"
rm -f "$slow_log"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "==> failed beside the main run: ${failed[*]}" >&2
    status=1
fi
exit "$status"
