# shellcheck shell=bash
# Sourced by benchmark scripts: start Debian's docker-registry on a free loopback port.
# Sets REGISTRY (host:port) and registers a trap that stops it.
start_registry() {
  local dir; dir=$(mktemp -d)
  local port; port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  cat >"$dir/config.yml" <<CFG
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $dir/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port}
CFG
  docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
  REGISTRY_PID=$!
  REGISTRY_DIR=$dir
  REGISTRY=127.0.0.1:$port
  for _ in $(seq 50); do
    curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "docker-registry did not start; log:" >&2; cat "$dir/registry.log" >&2; return 1
}
stop_registry() {
  [ -n "${REGISTRY_PID:-}" ] && kill "$REGISTRY_PID" 2>/dev/null; wait "$REGISTRY_PID" 2>/dev/null
  [ -n "${REGISTRY_DIR:-}" ] && rm -rf "$REGISTRY_DIR"
  return 0
}
