#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: install what is missing,
# bring the two-site Ceph lab up, run lints, unit and integration tests and the
# Python wire check against it, bring the lab down.
#   KEEP_LAB=1 scripts/test.sh   leaves the lab running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

start=$SECONDS
deps_apt
deps_python "${RBD_ADDONS_VENV:-$PWD/target/venv}"
if [ "${KEEP_LAB:-0}" != 1 ]; then trap 'scripts/lab.sh down' EXIT; fi
scripts/lab.sh up >/dev/null

echo "== lint"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings

echo "== unit and integration tests (against the lab)"
cargo test --locked

echo "== wire compatibility (hand-encoded csi-addons requests, grpcio)"
"${RBD_ADDONS_VENV:-$PWD/target/venv}/bin/python" tests/python/wire_compat.py \
  target/debug/rbd-addons "${CEPHLAB_DIR:-/tmp/cephlab}/lab.json"

echo "== deploy/ manifests against the binary's own --help"
"${RBD_ADDONS_VENV:-$PWD/target/venv}/bin/python" tests/python/deploy_check.py target/debug/rbd-addons deploy

# Other Ceph releases (opt-in for now, e.g. RBD_ADDONS_RELEASES="reef"): the
# compatibility subset in each release's own lab, after Pacific's.
for release in ${RBD_ADDONS_RELEASES:-}; do
  echo "== compatibility subset on Ceph $release"
  scripts/compat.sh "$release"
done

echo "== all tests passed in $((SECONDS - start)) s"
