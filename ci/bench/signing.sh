#!/usr/bin/env bash
# What signing adds to a build: the demo recipe built twice into a loopback registry,
# once without and once with `--sign-key` (a cosign-format encrypted key, password from
# DISKFORGE_KEY_PASSWORD), alternating; prints the `attest` step's time (SBOM,
# provenance, and with a key the signatures: ECDSA and the `.sig` attachment's upload;
# the key is decrypted before any work starts, so a wrong password fails at once) and
# the whole build's, from --json-events.
#
# Usage: DISKFORGE_CACHE_DIR=<a cache holding the demo's base> ci/bench/signing.sh [ROUNDS]
# Then times `diskforge sign` alone on each unsigned image: the whole cost of a
# signature (process start, key decryption, signing, the attachment's upload).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
rounds=${1:-1}
diskforge=${DISKFORGE:-$repo/target/release/diskforge}
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg
# shellcheck source=ci/bench/registry.sh
. "$here/registry.sh"
start_registry
work=$(mktemp -d)
trap 'stop_registry; rm -rf "$work"' EXIT

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/signer.pem" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -outform DER -in "$work/signer.pem" -out "$work/signer.der"
# The key in cosign's encrypted format (what `cosign generate-key-pair` writes: scrypt
# N=2^16, r=8, p=1, then NaCl secretbox over the PKCS#8 DER), made with PyNaCl.
export DISKFORGE_KEY_PASSWORD=bench-password
python3 - "$work/signer.der" "$work/signer.key" <<'PY'
import base64, hashlib, json, os, sys
import nacl.secret, nacl.utils
der = open(sys.argv[1], "rb").read()
salt = os.urandom(32)
key = hashlib.scrypt(os.environ["DISKFORGE_KEY_PASSWORD"].encode(), salt=salt,
                     n=65536, r=8, p=1, maxmem=1 << 28, dklen=32)
nonce = nacl.utils.random(24)
box = nacl.secret.SecretBox(key).encrypt(der, nonce).ciphertext
body = {"kdf": {"name": "scrypt", "params": {"N": 65536, "r": 8, "p": 1},
                "salt": base64.b64encode(salt).decode()},
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(box).decode()}
b64 = base64.b64encode(json.dumps(body).encode()).decode()
pem = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
pem += "".join(b64[i:i + 64] + "\n" for i in range(0, len(b64), 64))
pem += "-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
open(sys.argv[2], "w").write(pem)
PY
export DISKFORGE_LAB_PASSWORD=lab-password

build() { # build NAME [EXTRA...]: prints "attest_seconds total_seconds"
  local name=$1; shift
  local s; s=$(date +%s.%N)
  "$diskforge" --json-events build "$repo/recipes/demo.yaml" --force \
    --output "docker://$REGISTRY/bench/$name:1" --tls-verify=false "$@" \
    2>"$work/$name.jsonl" >/dev/null || { tail -20 "$work/$name.jsonl" >&2; exit 1; }
  local e; e=$(date +%s.%N)
  python3 - "$work/$name.jsonl" "$s" "$e" <<'PY'
import json, sys
attest = None
for line in open(sys.argv[1]):
    try: ev = json.loads(line)
    except ValueError: continue
    if ev.get("event") == "attested":
        attest = ev["seconds"]; signed = ev["signed"]
print(f"{attest:.2f} {float(sys.argv[3]) - float(sys.argv[2]):.1f} {signed}")
PY
}

echo "| round | signed | attest step (s) | build (s) |"
echo "| ---: | --- | ---: | ---: |"
for r in $(seq "$rounds"); do
  read -r a t s < <(build "plain-$r")
  echo "| $r | $s | $a | $t |"
  read -r a t s < <(build "signed-$r" --sign-key "$work/signer.key")
  echo "| $r | $s | $a | $t |"
done
echo
echo "| \`diskforge sign --key\` (encrypted key) of an image already in the registry | seconds |"
echo "| --- | ---: |"
for r in $(seq "$rounds"); do
  s=$(date +%s.%N)
  "$diskforge" sign --tls-verify=false --key "$work/signer.key" \
    "docker://$REGISTRY/bench/plain-$r:1" >/dev/null 2>"$work/sign-$r.log" \
    || { cat "$work/sign-$r.log" >&2; exit 1; }
  python3 -c "import sys; print(f'| round {sys.argv[3]} | {float(sys.argv[2]) - float(sys.argv[1]):.2f} |')" \
    "$s" "$(date +%s.%N)" "$r"
done
