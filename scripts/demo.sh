#!/usr/bin/env bash
# A guided walk-through on a local two-site lab: builds rbd-addons, brings up two
# real Ceph clusters (site-a, site-b) peered by rbd-mirror, starts the server on
# site-a, creates a volume the way ceph-csi does, enables replication through
# the server and shows it syncing to site-b. Every command it runs is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

deps_apt
say "Building rbd-addons"
cargo build --release --locked -q
BIN=$PWD/target/release/rbd-addons

say "Bringing up the two-site Ceph lab (Pacific, rbd-mirror both ways)"
scripts/lab.sh up >/dev/null
LAB=${CEPHLAB_DIR:-/tmp/cephlab}
A=$LAB/a/ceph.conf
B=$LAB/b/ceph.conf
POOL=$(jq -r .pool "$LAB/lab.json")
POOL_ID=$(jq -r .sites.a.pool_id "$LAB/lab.json")
CLUSTER_ID=$(jq -r .cluster_id "$LAB/lab.json")

WORK=$(mktemp -d /tmp/rbd-addons-demo.XXXXXX)
SOCK=$WORK/csi-addons.sock
# The replication secret, as the csi-addons sidecar would pass it: in a file,
# never on the command line.
jq '{userID: .user, userKey: .key}' "$LAB/lab.json" >"$WORK/secret.json"
chmod 600 "$WORK/secret.json"

say "Starting the server for site-a on $SOCK"
"$BIN" serve --endpoint "unix://$SOCK" --ceph-csi-config "$LAB/a/csi-config.json" \
  --log-format text 2>"$WORK/server.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do [ -S "$SOCK" ] && break; sleep 0.1; done
export RBD_ADDONS_ENDPOINT=unix://$SOCK
show "$BIN" identity
show "$BIN" capabilities

say "Creating a volume on site-a the way ceph-csi does, and writing data to it"
UUID=$(cat /proc/sys/kernel/random/uuid)
IMAGE=$POOL/csi-vol-$UUID
VOLUME_ID=$(printf '0001-%04x-%s-%016x-%s' "${#CLUSTER_ID}" "$CLUSTER_ID" "$POOL_ID" "$UUID")
show rbd -c "$A" create "$IMAGE" --size 64M
show rbd -c "$A" bench --io-type write --io-size 64K --io-total 4M --io-pattern seq "$IMAGE" >/dev/null
echo "volume handle (PV spec.csi.volumeHandle): $VOLUME_ID"

say "Enabling replication through rbd-addons (snapshot mode, a snapshot every minute)"
show "$BIN" enable --volume-id "$VOLUME_ID" --secrets-file "$WORK/secret.json" \
  --param mirroringMode=snapshot --param schedulingInterval=1m
show rbd -c "$A" mirror image status "$IMAGE"
show rbd -c "$A" mirror snapshot schedule ls --pool "$POOL" --recursive

say "Waiting for site-b to hold the same data (rbd export | sha256sum on both sites)"
sum() { rbd -c "$1" export --no-progress "$IMAGE" - 2>/dev/null | sha256sum | cut -c1-16; }
SUM_A=$(sum "$A")
for i in $(seq 60); do
  SUM_B=$(sum "$B")
  echo "  after ${i}s: site-a $SUM_A  site-b $SUM_B"
  [ "$SUM_A" = "$SUM_B" ] && break
  sleep 1
done
[ "$SUM_A" = "$SUM_B" ] || { echo "site-b did not catch up" >&2; exit 1; }

say "Waiting for rbd-mirror on site-b to report up+replaying (its status refreshes every 30 s)"
for _ in $(seq 90); do
  STATE=$(rbd -c "$B" mirror image status "$IMAGE" --format json 2>/dev/null | jq -r .state)
  [ "$STATE" = up+replaying ] && break
  sleep 1
done
show rbd -c "$B" mirror image status "$IMAGE"

say "Asking rbd-addons when the volume last synced (what the VolumeReplication shows)"
for _ in $(seq 90); do
  if "$BIN" info --volume-id "$VOLUME_ID" --secrets-file "$WORK/secret.json" >/dev/null 2>&1; then break; fi
  sleep 1
done
show "$BIN" info --volume-id "$VOLUME_ID" --secrets-file "$WORK/secret.json"

say "Done"
cat <<EOF
The volume replicates to site-b. Try it yourself:
  export RBD_ADDONS_ENDPOINT=unix://$SOCK   (while this script runs; restart a server with:)
  $BIN serve --endpoint unix:///tmp/a.sock --ceph-csi-config $LAB/a/csi-config.json
  rbd -c $B mirror image status $IMAGE
The lab keeps running; stop it with: scripts/lab.sh down
EOF
