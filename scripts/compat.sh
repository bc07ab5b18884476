#!/usr/bin/env bash
# The compatibility subset on another Ceph release, in its own lab (see
# `scripts/lab.sh --release`): replication round trips and info, planned
# failover and failback by checksum, split-brain resync, the volume-group
# lifecycle and group failover, the group crash-consistency proof, bad inputs,
# destination info, fencing, space reclaim and volume group snapshots (the copy
# path on Reef, rbd_clone4 on Tentacle). The same test code as on
# Pacific, built on the host and run inside the release's root
# (scripts/in-lab-root.sh), so the server, the Ceph CLI and the tests' own
# librados writers all load that release's libraries.
# With RBD_ADDONS_IMAGE_CHECK=1 (test.sh sets it once it has built the
# container image) the image is then proven on the same lab (scripts/image.sh).
#   scripts/compat.sh reef|tentacle      (KEEP_LAB=1 leaves the lab running)
set -euo pipefail
cd "$(dirname "$0")/.."
release=${1:?usage: scripts/compat.sh reef|tentacle}
start=$SECONDS
if [ "${KEEP_LAB:-0}" != 1 ]; then trap 'scripts/lab.sh down --release "$release" >/dev/null 2>&1' EXIT; fi
tests=(--test server --test cli --test bad_inputs --test replication --test groups --test group_consistency --test dr_drills
  --test destination_info --test fence --test reclaim --test group_snapshots --test metrics)
# Build first, on the host, while the lab comes up.
log=target/compat-build-$release.log
mkdir -p target
cargo test --locked --no-run "${tests[@]}" >"$log" 2>&1 &
build=$!
scripts/lab.sh up --release "$release" >/dev/null
lab_up=$((SECONDS - start))
wait "$build" || { cat "$log" >&2; echo "== building the compatibility subset FAILED" >&2; exit 1; }
root=$(jq -r .root "/tmp/cephlab-$release/lab.json")
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/in-lab-root.sh $root"
# A few cuts of the group crash-consistency proof (Pacific runs ten).
if ! GROUP_CUTS=${GROUP_CUTS:-4} CEPHLAB_DIR="/tmp/cephlab-$release" cargo test --locked "${tests[@]}"; then
  echo "== the compatibility subset FAILED on Ceph $release (lab: /tmp/cephlab-$release)" >&2
  # A daemon that crashed explains many a later failure: name it.
  grep -l "Caught signal" "/tmp/cephlab-$release"/*/log/*.log 2>/dev/null | sed 's/^/== a Ceph daemon crashed, see /' >&2 || true
  exit 1
fi
echo "== Ceph $release: lab up in $lab_up s, subset passed in $((SECONDS - start)) s"
# The container image test.sh built, on this release's lab.
if [ "${RBD_ADDONS_IMAGE_CHECK:-0}" = 1 ]; then
  unset CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER
  scripts/image.sh check "$release"
fi
