#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: install what is missing,
# bring the two-site Ceph lab up, run lints, unit and integration tests and the
# Python wire check against it (Ceph Pacific, the host's), bring the lab down;
# then the compatibility subset on Ceph Reef and Tentacle, each in its own lab
# run from a Debian root (scripts/compat.sh).
#   KEEP_LAB=1 scripts/test.sh           leaves the labs running afterwards.
#   RBD_ADDONS_RELEASES="reef" ...       other releases to run the subset on
#                                        (default "reef tentacle"; "" for none).
#   RBD_ADDONS_IMAGE=0 ...               skip the container image (built after
#                                        the Pacific suite, then proven on each
#                                        release's lab: scripts/image.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

start=$SECONDS
release=pacific
# The partition drills' lab: each site in its own network namespace.
NETNS_LAB=${RBD_ADDONS_NETNS_LAB:-/tmp/cephlab-netns}
times=()
finish() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    echo "== FAILED on Ceph $release (exit $rc) after $((SECONDS - start)) s" >&2
    # Before the labs (and their logs) go.
    local f
    for f in $(grep -l "Caught signal" "${CEPHLAB_DIR:-/tmp/cephlab}"/*/log/*.log "$NETNS_LAB"/*/log/*.log 2>/dev/null); do
      echo "== a Ceph daemon crashed: $f" >&2
      grep -m1 -A25 "Caught signal" "$f" >&2 || true
    done
  fi
  if [ "${RBD_ADDONS_IMAGE:-1}" != 0 ]; then scripts/image.sh clean >/dev/null 2>&1 || true; fi
  if [ "${KEEP_LAB:-0}" != 1 ]; then
    scripts/lab.sh down >/dev/null 2>&1 || true
    CEPHLAB_DIR=$NETNS_LAB scripts/lab.sh down >/dev/null 2>&1 || true
  fi
}
trap finish EXIT
deps_apt
deps_python "${RBD_ADDONS_VENV:-$PWD/target/venv}"
scripts/lab.sh up >/dev/null

echo "== lint"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings

echo "== unit and integration tests (against the lab, Ceph pacific)"
cargo test --locked

echo "== wire compatibility (hand-encoded csi-addons requests, grpcio)"
"${RBD_ADDONS_VENV:-$PWD/target/venv}/bin/python" tests/python/wire_compat.py \
  target/debug/rbd-addons "${CEPHLAB_DIR:-/tmp/cephlab}/lab.json"

echo "== deploy/ manifests against the binary's own --help"
"${RBD_ADDONS_VENV:-$PWD/target/venv}/bin/python" tests/python/deploy_check.py target/debug/rbd-addons deploy Dockerfile

echo "== docs/ against the binary's serve --help, and every link in README.md and docs/"
"${RBD_ADDONS_VENV:-$PWD/target/venv}/bin/python" tests/python/docs_check.py target/debug/rbd-addons .
times+=("pacific $((SECONDS - start)) s (build, lints, full suite)")
echo "== Ceph pacific: passed in $((SECONDS - start)) s"

if [ "${RBD_ADDONS_IMAGE:-1}" != 0 ]; then
  echo "== the container image: built from the Dockerfile, proven on Ceph pacific"
  t=$SECONDS
  scripts/image.sh build
  scripts/image.sh check pacific
  times+=("image $((SECONDS - t)) s (bases, build, pacific check)")
  # compat.sh proves it on each release's lab too.
  export RBD_ADDONS_IMAGE_CHECK=1
fi
# One lab at a time on a small machine.
if [ "${KEEP_LAB:-0}" != 1 ]; then scripts/lab.sh down >/dev/null; fi

echo "== partition drills (each site in its own network namespace, Ceph pacific)"
release="pacific, namespaced"
t=$SECONDS
CEPHLAB_DIR=$NETNS_LAB scripts/lab.sh up --netns >/dev/null
CEPHLAB_DIR=$NETNS_LAB cargo test --locked --test partition_drills -- --ignored --test-threads 1 --nocapture
if [ "${KEEP_LAB:-0}" != 1 ]; then CEPHLAB_DIR=$NETNS_LAB scripts/lab.sh down >/dev/null; fi
times+=("partition drills $((SECONDS - t)) s (namespaced lab, drills)")

for release in ${RBD_ADDONS_RELEASES-reef tentacle}; do
  echo "== compatibility subset on Ceph $release"
  t=$SECONDS
  scripts/compat.sh "$release"
  times+=("$release $((SECONDS - t)) s (root, lab, subset)")
done
release=none

echo "== all tests passed in $((SECONDS - start)) s: $(IFS=';'; echo "${times[*]}" | sed 's/;/; /g')"
