#!/usr/bin/env bash
# The compatibility subset on another Ceph release, in its own lab (see
# `scripts/lab.sh --release`): replication round trips and info, planned
# failover and failback by checksum, split-brain resync, the volume-group
# lifecycle and group failover, bad inputs, destination info, fencing and
# space reclaim. The same test code as on Pacific; the lab's root decides
# which librbd the server and the Ceph CLI load.
#   scripts/compat.sh reef|tentacle      (KEEP_LAB=1 leaves the lab running)
set -euo pipefail
cd "$(dirname "$0")/.."
release=${1:?usage: scripts/compat.sh reef|tentacle}
start=$SECONDS
if [ "${KEEP_LAB:-0}" != 1 ]; then trap 'scripts/lab.sh down --release "$release" >/dev/null 2>&1' EXIT; fi
scripts/lab.sh up --release "$release" >/dev/null
lab_up=$((SECONDS - start))
if ! CEPHLAB_DIR="/tmp/cephlab-$release" cargo test --locked \
  --test bad_inputs --test replication --test groups --test dr_drills \
  --test destination_info --test fence --test reclaim; then
  echo "== the compatibility subset FAILED on Ceph $release" >&2
  exit 1
fi
echo "== Ceph $release: lab up in $lab_up s, subset passed in $((SECONDS - start)) s"
