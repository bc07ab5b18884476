#!/usr/bin/env bash
# Installs what building and testing rbd-addons needs on Debian 12, skipping
# whatever is already there. Sourced by test.sh and demo.sh.
set -euo pipefail

deps_apt() {
  local need=()
  # librbd/librados headers for the bindings, libclang for bindgen.
  for pkg in librbd-dev librados-dev libclang-dev jq; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
  done
  if [ "${#need[@]}" -gt 0 ]; then
    echo "[deps] installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  fi
  command -v cargo >/dev/null || { echo "[deps] cargo (Rust stable >= 1.88) is required" >&2; exit 1; }
}

# A virtualenv with the Python gRPC client used by the wire-compatibility check,
# and PyYAML for the check of the manifests in deploy/.
deps_python() {
  local venv=$1
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" 2>/dev/null || {
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -q --no-install-recommends python3-venv >/dev/null
      python3 -m venv "$venv"
    }
  fi
  "$venv/bin/python" -c 'import grpc, grpc_reflection, yaml' 2>/dev/null ||
    "$venv/bin/pip" install -q --disable-pip-version-check grpcio==1.85.1 grpcio-reflection==1.85.1 pyyaml==6.0.3
}
