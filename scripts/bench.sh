#!/usr/bin/env bash
# The group and scale figures in one run, on a lab that is up (scripts/lab.sh up):
#   1. group RPO, the writers' stall and the revert at the default generationInterval,
#      with 3 and with 10 members (examples/group_consistency, CUTS forced failovers each);
#   2. group Info of a 10-member group beside volume Info (bench_replication --group-info);
#   3. a planned failover of VOLUMES volumes through the servers beside librbd with
#      16 threads per site (bench_replication --scale).
# Not part of the tests: figures, not verdicts on correctness. Takes about 30 minutes.
#
#   scripts/bench.sh [CUTS] [VOLUMES]      defaults: 10 1000
set -euo pipefail
cd "$(dirname "$0")/.."
cuts=${1:-10}
volumes=${2:-1000}
[ -f "${CEPHLAB_DIR:-/tmp/cephlab}/lab.json" ] || { echo "no lab: run scripts/lab.sh up" >&2; exit 2; }
cargo build --release --bins --examples
started=$(date +%s)
say() { printf '\n== %s (%s s in)\n' "$1" "$(( $(date +%s) - started ))"; }
say "group failover at the default generationInterval: 3 and 10 members, $cuts cuts each"
target/release/examples/group_consistency "$cuts" --members 3,10
say "group Info, 10 members, beside volume Info"
target/release/examples/bench_replication --group-info 10
say "planned failover of $volumes volumes beside librbd with 16 threads per site"
target/release/examples/bench_replication --scale "$volumes"
say "done"
