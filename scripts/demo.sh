#!/usr/bin/env bash
# A guided DR walk-through on a local two-site lab: builds rbd-addons, brings up
# two real Ceph clusters (site-a, site-b) peered by rbd-mirror, starts one server
# per site, creates a volume the way ceph-csi does, enables replication, shows it
# syncing to site-b, then runs a planned failover to site-b and a failback, with
# the data checked on both sites. Every command it runs is printed: it is the
# runbook, executed.
#   scripts/demo.sh [--release pacific|reef|tentacle]
# Reef and Tentacle run from a Debian root (scripts/lab.sh --release): after
# building on the host, the walk-through itself re-runs inside that root, so
# the servers and the Ceph CLI load that release's libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*" >&2; "$@"; }

RELEASE=pacific
case "${1:-}" in
  --release) RELEASE=${2:?usage: scripts/demo.sh [--release pacific|reef|tentacle]} ;;
  "") ;;
  *) echo "usage: scripts/demo.sh [--release pacific|reef|tentacle]" >&2; exit 2 ;;
esac
case "$RELEASE" in
  pacific) LAB=${CEPHLAB_DIR:-/tmp/cephlab} ;;
  reef | tentacle) LAB=/tmp/cephlab-$RELEASE ;;
  *) echo "unknown release $RELEASE: pacific, reef or tentacle" >&2; exit 2 ;;
esac
BIN=$PWD/target/release/rbd-addons

if [ -z "${CEPHLAB_IN_ROOT:-}" ]; then
  deps_apt
  say "Building rbd-addons"
  cargo build --release --locked -q
  say "Bringing up the two-site Ceph lab (Ceph $RELEASE, rbd-mirror both ways)"
  scripts/lab.sh up --release "$RELEASE" >/dev/null
  if [ "$RELEASE" != pacific ]; then
    say "Continuing inside the $RELEASE root ($(jq -r .root "$LAB/lab.json"))"
    exec scripts/in-lab-root.sh "$(jq -r .root "$LAB/lab.json")" bash scripts/demo.sh --release "$RELEASE"
  fi
fi
A=$LAB/a/ceph.conf
B=$LAB/b/ceph.conf
POOL=$(jq -r .pool "$LAB/lab.json")
POOL_ID=$(jq -r .sites.a.pool_id "$LAB/lab.json")
CLUSTER_ID=$(jq -r .cluster_id "$LAB/lab.json")
show rbd --version

WORK=$(mktemp -d /tmp/rbd-addons-demo.XXXXXX)
SOCK=$WORK/site-a.sock
SOCK_B=$WORK/site-b.sock
# The replication secret, as the csi-addons sidecar would pass it: in a file,
# never on the command line.
jq '{userID: .user, userKey: .key}' "$LAB/lab.json" >"$WORK/secret.json"
chmod 600 "$WORK/secret.json"

say "Starting one server per site (as beside each site's csi-rbdplugin)"
"$BIN" serve --endpoint "unix://$SOCK" --ceph-csi-config "$LAB/a/csi-config.json" \
  --cluster-mapping "$LAB/a/cluster-mapping.json" --log-format text --metrics-address 127.0.0.1:9690 \
  2>"$WORK/server-a.log" &
SERVER_A=$!
"$BIN" serve --endpoint "unix://$SOCK_B" --ceph-csi-config "$LAB/b/csi-config.json" \
  --cluster-mapping "$LAB/b/cluster-mapping.json" --log-format text --metrics-address 127.0.0.1:9691 \
  2>"$WORK/server-b.log" &
SERVER_B=$!
trap 'kill $SERVER_A $SERVER_B 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do [ -S "$SOCK" ] && [ -S "$SOCK_B" ] && break; sleep 0.1; done
echo "site-a: $SOCK   site-b: $SOCK_B"
echo "site-b resolves site-a's volume handles through $LAB/b/cluster-mapping.json:"
jq -c . "$LAB/b/cluster-mapping.json"
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
# (Until site-b has a copy, the export fails and the sum is that of nothing.)
sum() { { rbd -c "$1" export --no-progress "$IMAGE" - 2>/dev/null || true; } | sha256sum | cut -c1-16; }
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

status() {
  for site in a b; do
    local conf=$LAB/$site/ceph.conf
    printf '  site-%s: primary=%-5s status=%s\n' "$site" \
      "$(rbd -c "$conf" info "$IMAGE" --format json 2>/dev/null | jq -r .mirroring.primary)" \
      "$(rbd -c "$conf" mirror image status "$IMAGE" --format json 2>/dev/null | jq -r '.state + " / " + (.description | split(",")[0])')"
  done
}
SECRET=(--volume-id "$VOLUME_ID" --secrets-file "$WORK/secret.json")

say "Planned failover to site-b: demote on site-a, then promote on site-b (not forced)"
status
show "$BIN" demote --endpoint "unix://$SOCK" "${SECRET[@]}"
show "$BIN" promote --endpoint "unix://$SOCK_B" "${SECRET[@]}" --param schedulingInterval=1m
status
echo "  data: site-a $(sum "$A")  site-b $(sum "$B")  (identical: nothing lost)"

say "The application now writes on site-b"
show rbd -c "$B" bench --io-type write --io-size 4K --io-total 512K --io-pattern rand "$IMAGE" >/dev/null
echo "(the 1m schedule would carry it to site-a; take the mirror snapshot now instead of waiting)"
show rbd -c "$B" mirror image snapshot "$IMAGE"
SUM_B=$(sum "$B")
for i in $(seq 90); do [ "$(sum "$A")" = "$SUM_B" ] && break; sleep 1; done
echo "  data: site-a $(sum "$A")  site-b $SUM_B"
echo "Before failing back, wait until site-a replays from site-b (demoting both sides too early leaves both demoted):"
for _ in $(seq 90); do
  [ "$(rbd -c "$A" mirror image status "$IMAGE" --format json 2>/dev/null | jq -r .state)" = up+replaying ] && break
  sleep 1
done
status

say "Failback to site-a: demote on site-b, promote on site-a"
show "$BIN" demote --endpoint "unix://$SOCK_B" "${SECRET[@]}"
show "$BIN" promote --endpoint "unix://$SOCK" "${SECRET[@]}" --param schedulingInterval=1m
status
[ "$(sum "$A")" = "$SUM_B" ] || { echo "site-a lost site-b's writes" >&2; exit 1; }
echo "  data: site-a $(sum "$A")  site-b $(sum "$B")  (site-a holds what was written on site-b)"

say "A volume group: three volumes of one application fail over as one unit"
GROUP_IMAGES=()
GROUP_IDS=()
for _ in 1 2 3; do
  U=$(cat /proc/sys/kernel/random/uuid)
  GROUP_IMAGES+=("$POOL/csi-vol-$U")
  GROUP_IDS+=(--volume-id "$(printf '0001-%04x-%s-%016x-%s' "${#CLUSTER_ID}" "$CLUSTER_ID" "$POOL_ID" "$U")")
  rbd -c "$A" create "$POOL/csi-vol-$U" --size 64M
done
G_OUT=$(show "$BIN" group create --name demo-app --param clusterID="$CLUSTER_ID" --param pool="$POOL" \
  "${GROUP_IDS[@]}" --secrets-file "$WORK/secret.json" --json)
GROUP_ID=$(jq -r .group_id <<<"$G_OUT")
echo "group handle: $GROUP_ID"
show rbd -c "$A" group image ls "$POOL/csi-vol-group-${GROUP_ID: -36}"
GSECRET=(--group-id "$GROUP_ID" --secrets-file "$WORK/secret.json")
echo "(journal mirroring, the group default: every write replays on site-b in order;"
echo " a consistency generation every 10 s: a fence-post snapshot per member, then one group snapshot)"
show "$BIN" enable "${GSECRET[@]}" --param generationInterval=10s
for img in "${GROUP_IMAGES[@]}"; do
  for _ in $(seq 60); do rbd -c "$B" info "$img" >/dev/null 2>&1 && break; sleep 0.5; done
  rbd -c "$A" bench --io-type write --io-size 64K --io-total 2M --io-pattern rand "$img" >/dev/null
done
echo "The application writes to all three; the server takes generations while the group is primary:"
sleep 12
show "$BIN" group generations "${GSECRET[@]}" --ceph-csi-config "$LAB/a/csi-config.json" \
  --cluster-mapping "$LAB/a/cluster-mapping.json"
gsum() { for img in "${GROUP_IMAGES[@]}"; do { rbd -c "$1" export --no-progress "$img" - 2>/dev/null || true; } | sha256sum | cut -c1-8; done | paste -sd' '; }
say "Planned group failover: demote the group on site-a (a last generation), promote it on site-b"
show "$BIN" demote --endpoint "unix://$SOCK" "${GSECRET[@]}"
for _ in $(seq 90); do
  "$BIN" promote --endpoint "unix://$SOCK_B" "${GSECRET[@]}" >/dev/null 2>&1 && break
  sleep 1
done
show "$BIN" promote --endpoint "unix://$SOCK_B" "${GSECRET[@]}"
echo "  data: site-a $(gsum "$A")"
echo "        site-b $(gsum "$B")  (identical: the group came over as one instant, nothing lost)"
[ "$(gsum "$A")" = "$(gsum "$B")" ] || { echo "the group's data differs between the sites" >&2; exit 1; }
echo "site-b took over the generations (its own RBD group now holds the members):"
show rbd -c "$B" group image ls "$POOL/csi-vol-group-${GROUP_ID: -36}"
echo "(tests/group_consistency.rs does the same as a forced failover with site-a frozen at"
echo " random instants while a writer runs; cargo run --release --example group_consistency measures it)"

say "Done"
# On Reef or Tentacle, the commands below run inside that release's root.
IN_ROOT=""
if [ -n "${CEPHLAB_IN_ROOT:-}" ]; then IN_ROOT="scripts/in-lab-root.sh $(jq -r .root "$LAB/lab.json") "; fi
cat <<EOF
The volume replicated to site-b, failed over to it and back without losing a write,
and a group of three volumes failed over to site-b as one crash-consistent unit.
docs/runbook.md has the unplanned failover (promote --force) and the
split-brain resync. To try them here, start the servers again:
  $IN_ROOT$BIN serve --endpoint unix:///tmp/a.sock --ceph-csi-config $LAB/a/csi-config.json --cluster-mapping $LAB/a/cluster-mapping.json
  $IN_ROOT$BIN serve --endpoint unix:///tmp/b.sock --ceph-csi-config $LAB/b/csi-config.json --cluster-mapping $LAB/b/cluster-mapping.json
  volume handle: $VOLUME_ID
  ${IN_ROOT}rbd -c $B mirror image status $IMAGE
The lab keeps running; stop it with: scripts/lab.sh down --release $RELEASE
EOF
