#!/usr/bin/env bash
# Builds the container image from the Dockerfile, unchanged, as a user would
# (`podman build .`), and proves that one image on every Ceph release we
# support: its server runs as the deploy overlay runs it (host network,
# read-only root filesystem, user 65532, the socket in a directory shared as
# the sidecar shares it) against the Pacific, Reef and Tentacle labs.
#
#   scripts/image.sh                everything: bases, image, each release's
#                                   lab in turn (up, checks, down), cleanup
#   scripts/image.sh build          the local base images and the image
#   scripts/image.sh check RELEASE  the checks against that release's lab,
#                                   which must be up (scripts/lab.sh)
#   scripts/image.sh clean          remove what `build` made
#
# No registry is reachable here: the bases the Dockerfile names (rust:1-bookworm,
# debian:sid-slim) are made locally from Debian's packages, with this machine's
# Rust toolchain standing in for the official Rust image. Everything lives in
# a podman store of this script's own (under $RBD_ADDONS_IMAGE_DIR), so
# `clean` removes exactly the containers and images this script made.
#
# Per release, checks: GetIdentity's manifest names the Ceph release of the
# librbd the image's label promises; Enable; a planned failover and failback
# judged by checksums in Ceph's own view; a group snapshot restored as
# csi-rbdplugin restores one, by checksum; SIGTERM: the container exits
# within its grace period and removes its socket.
#   RBD_ADDONS_IMAGE_RELEASES   releases of the no-argument run
#                               (default "pacific reef tentacle")
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

DIR=${RBD_ADDONS_IMAGE_DIR:-/var/tmp/rbd-addons-image}
IMAGE=localhost/rbd-addons:test
# What the Dockerfile builds FROM, made here.
BASES=(debian:bookworm-slim debian:sid-slim rust:1-bookworm)
# Pod's terminationGracePeriodSeconds in deploy/ and the server's default
# --shutdown-grace below it.
GRACE=30
TIMEOUT=${CEPHLAB_TIMEOUT:-120}

log() { echo "[image $(date +%H:%M:%S)] $*" >&2; }
# The release whose containers are running, for their logs on failure.
CHECKING=
die() {
  echo "[image] FAILED: $*" >&2
  local site
  for site in a b; do
    [ -n "$CHECKING" ] && pm logs --tail 20 "rbd-addons-image-$CHECKING-$site" 2>/dev/null |
      sed "s/^/[site-$site] /" >&2 || true
  done
  exit 1
}

pm() { podman --root "$DIR/store" --runroot "$DIR/run" "$@"; }

# crun cannot start containers on these machines (setrlimit, cgroups): runc,
# with the limits capped at the host's hard limits.
setup_podman() {
  if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v mmdebstrap >/dev/null; then
    log "installing podman, runc, mmdebstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q podman runc mmdebstrap >/dev/null
  fi
  mkdir -p "$DIR"
  local nofile
  nofile=$(ulimit -Hn)
  cat >"$DIR/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
  export CONTAINERS_CONF=$DIR/containers.conf
}

mirror() {
  local m
  m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$m" ] || die "no Debian mirror found in the host's apt sources"
  echo "$m"
}

has_image() { pm image exists "$1" 2>/dev/null; }

# A slim Debian base, as the official debian:<suite>-slim is: apt and the
# essential packages, no docs.
make_debian() {
  local suite=$1 tag=$2
  has_image "localhost/debian:$tag" && return 0
  log "making localhost/debian:$tag from Debian's packages"
  local tar=$DIR/debian-$suite.tar
  mmdebstrap --variant=apt --mode=root --quiet \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    "$suite" "$tar" "deb $(mirror) $suite main" >"$DIR/mmdebstrap-$suite.log" 2>&1 ||
    die "mmdebstrap $suite: see $DIR/mmdebstrap-$suite.log"
  pm import -q --change 'CMD ["bash"]' "$tar" "localhost/debian:$tag" >/dev/null
  rm -f "$tar"
  echo "localhost/debian:$tag" >>"$DIR/made"
}

# Stands in for the official rust:1-bookworm: Debian 12 with a C toolchain and
# this machine's Rust toolchain (docs left out), trusting the certificate
# authorities this machine trusts (its HTTPS traffic to crates.io is
# re-signed by a local one).
make_rust() {
  has_image localhost/rust:1-bookworm && return 0
  log "making localhost/rust:1-bookworm (Debian 12 + this machine's Rust toolchain)"
  local ctx=$DIR/rust-context sysroot
  sysroot=$(rustc --print sysroot)
  rm -rf "$ctx"
  mkdir -p "$ctx/toolchain" "$ctx/ca"
  cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/toolchain/"
  [ -d "$sysroot/libexec" ] && cp -a "$sysroot/libexec" "$ctx/toolchain/"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  cat >"$ctx/Containerfile" <<'EOF'
FROM localhost/debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev make pkg-config git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
COPY toolchain/ /usr/local/rust/
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_HOME=/usr/local/cargo
EOF
  pm build --pull=never --network host -q -t localhost/rust:1-bookworm "$ctx" >"$DIR/rust-image.log" 2>&1 ||
    die "building the Rust stand-in: see $DIR/rust-image.log"
  rm -rf "$ctx"
  echo "localhost/rust:1-bookworm" >>"$DIR/made"
}

cmd_build() {
  setup_podman
  local t=$SECONDS
  make_debian bookworm bookworm-slim
  make_debian sid sid-slim
  make_rust
  log "bases ready in $((SECONDS - t)) s"
  t=$SECONDS
  log "podman build --pull=never . (the Dockerfile as it is)"
  pm build --pull=never --network host -t "$IMAGE" \
    --build-arg SOURCE="$(git remote get-url origin 2>/dev/null || pwd)" \
    --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    . >"$DIR/build.log" 2>&1 || {
    tail -30 "$DIR/build.log" >&2
    die "podman build: see $DIR/build.log"
  }
  grep -qx "$IMAGE" "$DIR/made" 2>/dev/null || echo "$IMAGE" >>"$DIR/made"
  # The build stage's image is kept by podman, untagged: it is ours too.
  pm images --filter dangling=true -q >>"$DIR/made"
  local size
  size=$(pm image inspect --format '{{.Size}}' "$IMAGE")
  log "image $IMAGE built in $((SECONDS - t)) s: $((size / 1000000)) MB," \
    "binary $(pm run --rm --pull=never --network none --entrypoint /bin/sh "$IMAGE" -c 'stat -c %s /usr/local/bin/rbd-addons') bytes," \
    "librbd1 $(pm run --rm --pull=never --network none --entrypoint /bin/sh "$IMAGE" -c "dpkg-query -W -f='\${Version}' librbd1")"
}

cmd_clean() {
  setup_podman
  local name
  for name in $(pm ps -a --format '{{.Names}}' | grep '^rbd-addons-image-' || true); do
    pm rm -f "$name" >/dev/null
  done
  if [ -f "$DIR/made" ]; then
    # Newest first: the image before the bases it was built on.
    tac "$DIR/made" | while read -r image; do
      pm rmi -f "$image" >/dev/null 2>&1 || true
    done
  fi
  # The store is this script's own; nothing else lives in it.
  pm system reset --force >/dev/null 2>&1 || true
  rm -rf "$DIR"
  log "removed what it made"
}

# --- the checks against one release's lab --------------------------------

cmd_check() {
  local release=${1:?usage: scripts/image.sh check pacific|reef|tentacle}
  setup_podman
  has_image "$IMAGE" || die "no image: run scripts/image.sh build first"
  local lab
  case "$release" in
    pacific) lab=${CEPHLAB_DIR:-/tmp/cephlab} ;;
    reef | tentacle) lab=/tmp/cephlab-$release ;;
    *) die "unknown release $release" ;;
  esac
  [ -f "$lab/lab.json" ] || die "no $release lab at $lab: scripts/lab.sh up --release $release"
  local t=$SECONDS
  local root pool pool_id cluster_id
  root=$(jq -r '.root // empty' "$lab/lab.json")
  pool=$(jq -r .pool "$lab/lab.json")
  pool_id=$(jq -r .sites.a.pool_id "$lab/lab.json")
  cluster_id=$(jq -r .cluster_id "$lab/lab.json")
  # The lab's own rbd: inside its root on Reef and Tentacle.
  ceph_rbd() {
    local site=$1
    shift
    if [ -n "$root" ]; then
      scripts/in-lab-root.sh "$root" rbd -c "$lab/$site/ceph.conf" "$@"
    else
      rbd -c "$lab/$site/ceph.conf" "$@"
    fi
  }
  sum() { { ceph_rbd "$1" export --no-progress "$2" - 2>/dev/null || true; } | sha256sum | cut -c1-16; }
  # Polls until SITE's copy of IMAGE has checksum WANT, bounded.
  holds() {
    local site=$1 image=$2 want=$3 i
    for i in $(seq "$TIMEOUT"); do
      [ "$(sum "$site" "$image")" = "$want" ] && return 0
      sleep 1
    done
    return 1
  }
  local work=$DIR/check-$release
  rm -rf "$work"
  mkdir -p "$work"
  jq '{userID: .user, userKey: .key}' "$lab/lab.json" >"$work/secret.json"
  chmod 600 "$work/secret.json"
  local cli=target/debug/rbd-addons
  [ -x "$cli" ] || cargo build --locked -q
  local label
  label=$(pm image inspect --format '{{index .Labels "io.rbd-addons.librbd"}}' "$IMAGE")

  # One server per site, as beside each site's csi-rbdplugin: the socket
  # directory is group-owned by the server's group and setgid, as an emptyDir
  # is under the pod's fsGroup 65532, so the sidecar (here: root) can reach it.
  start_site() {
    local site=$1
    local sock=$work/site-$site config=$work/config-$site
    install -d -m 2770 -g 65532 "$sock"
    # ceph-csi's ConfigMap, mounted where the deploy overlay mounts it.
    install -d -m 755 "$config"
    install -m 644 "$lab/$site/csi-config.json" "$config/config.json"
    install -m 644 "$lab/$site/cluster-mapping.json" "$config/cluster-mapping.json"
    pm run -d --pull=never --name "rbd-addons-image-$release-$site" --network host \
      --read-only --read-only-tmpfs=false --user 65532:65532 \
      -v "$sock:/csi" -v "$config:/etc/ceph-csi-config:ro" \
      "$IMAGE" serve --endpoint unix:///csi/csi-addons.sock \
      --csi-endpoint unix:///csi/csi-front.sock --csi-upstream unix:///csi/csi-rbdplugin.sock \
      --metrics-address 127.0.0.1:0 --log-format text >/dev/null
  }
  # A failed run's containers stay for their logs until the next check or `clean`.
  pm rm -f "rbd-addons-image-$release-a" "rbd-addons-image-$release-b" >/dev/null 2>&1 || true
  CHECKING=$release
  start_site a
  start_site b
  local a=unix://$work/site-a/csi-addons.sock b=unix://$work/site-b/csi-addons.sock
  local i
  for i in $(seq 100); do
    [ -S "$work/site-a/csi-addons.sock" ] && [ -S "$work/site-b/csi-addons.sock" ] && break
    sleep 0.1
  done
  [ -S "$work/site-a/csi-addons.sock" ] || {
    pm logs "rbd-addons-image-$release-a" >&2
    die "$release: the image's server made no socket in 10 s"
  }
  [ "$(stat -c %U "$work/site-a/csi-addons.sock")" != root ] || die "$release: the socket belongs to root"

  # Identity: the image's librbd, whatever the cluster's release.
  local id
  id=$("$cli" identity --endpoint "$a" --json)
  local ceph_release version
  ceph_release=$(jq -r '.manifest["ceph-release"]' <<<"$id")
  version=$(jq -r '.manifest["librbd-version"]' <<<"$id")
  case "$label" in
    16.2) [ "$ceph_release" = pacific ] ;;
    18.2) [ "$ceph_release" = reef ] ;;
    19.2) [ "$ceph_release" = squid ] ;;
    20.2) [ "$ceph_release" = tentacle ] ;;
    *) false ;;
  esac || die "$release: the label promises librbd $label, the server loaded $ceph_release ($version)"
  log "$release: identity: the image's server runs librbd $version ($ceph_release), as its label says ($label)"

  # A volume as ceph-csi makes one, replicated, failed over and back.
  local uuid image volume_id
  uuid=$(cat /proc/sys/kernel/random/uuid)
  image=$pool/csi-vol-$uuid
  volume_id=$(printf '0001-%04x-%s-%016x-%s' "${#cluster_id}" "$cluster_id" "$pool_id" "$uuid")
  ceph_rbd a create "$image" --size 64M
  ceph_rbd a bench --io-type write --io-size 64K --io-total 4M --io-pattern rand "$image" >/dev/null
  local secret=(--volume-id "$volume_id" --secrets-file "$work/secret.json")
  "$cli" enable --endpoint "$a" "${secret[@]}" --param mirroringMode=snapshot --param schedulingInterval=1m >/dev/null ||
    die "$release: enable through the image's server failed"
  local sum_a sum_b
  sum_a=$(sum a "$image")
  holds b "$image" "$sum_a" || die "$release: site-b never held site-a's data"
  # Planned failover: demote on a, promote on b (which waits for the demotion
  # to replay; resent while it answers that it cannot yet).
  "$cli" demote --endpoint "$a" "${secret[@]}" >/dev/null
  promote() {
    local endpoint=$1
    for i in $(seq 30); do
      "$cli" promote --endpoint "$endpoint" "${secret[@]}" >"$work/promote.out" 2>&1 && return 0
      sleep 2
    done
    cat "$work/promote.out" >&2
    return 1
  }
  promote "$b" || die "$release: promote on site-b failed"
  [ "$(ceph_rbd b info "$image" --format json | jq -r .mirroring.primary)" = true ] ||
    die "$release: site-b's copy is not primary after the promote"
  [ "$(sum b "$image")" = "$sum_a" ] || die "$release: site-b's data differs after the failover"
  # The application writes on b; failback carries those writes to a.
  ceph_rbd b bench --io-type write --io-size 4K --io-total 512K --io-pattern rand "$image" >/dev/null
  ceph_rbd b mirror image snapshot "$image" >/dev/null
  sum_b=$(sum b "$image")
  holds a "$image" "$sum_b" || die "$release: site-a never held site-b's writes"
  "$cli" demote --endpoint "$b" "${secret[@]}" >/dev/null
  promote "$a" || die "$release: promote on site-a (failback) failed"
  [ "$(ceph_rbd a info "$image" --format json | jq -r .mirroring.primary)" = true ] ||
    die "$release: site-a's copy is not primary after the failback"
  [ "$(sum a "$image")" = "$sum_b" ] || die "$release: site-a lost site-b's writes in the failback"
  log "$release: enable, planned failover and failback: site-a $(sum a "$image") = site-b $sum_b"
  "$cli" disable --endpoint "$a" "${secret[@]}" >/dev/null

  # A group snapshot through the CSI front, each member restored as
  # csi-rbdplugin restores a snapshot (a clone of csi-snap-<uuid>@csi-snap-<uuid>).
  local members=() ids=() sums=()
  for i in 1 2; do
    uuid=$(cat /proc/sys/kernel/random/uuid)
    members+=("$pool/csi-vol-$uuid")
    ids+=(--volume-id "$(printf '0001-%04x-%s-%016x-%s' "${#cluster_id}" "$cluster_id" "$pool_id" "$uuid")")
    ceph_rbd a create "$pool/csi-vol-$uuid" --size 32M
    ceph_rbd a bench --io-type write --io-size 64K --io-total 2M --io-pattern rand "$pool/csi-vol-$uuid" >/dev/null
    sums+=("$(sum a "$pool/csi-vol-$uuid")")
  done
  local front=unix://$work/site-a/csi-front.sock snap
  snap=$("$cli" group-snapshot create --endpoint "$front" --name "image-check-$release" "${ids[@]}" \
    --param clusterID="$cluster_id" --param pool="$pool" --secrets-file "$work/secret.json" --json)
  # Written after the snapshot: the restored copies must not hold it.
  for m in "${members[@]}"; do
    ceph_rbd a bench --io-type write --io-size 64K --io-total 1M --io-pattern rand "$m" >/dev/null
  done
  local n=0 snapshot_id snap_image restored
  for snapshot_id in $(jq -r '.snapshots[].snapshot_id' <<<"$snap"); do
    snap_image=csi-snap-${snapshot_id: -36}
    restored=$pool/restored-$(cat /proc/sys/kernel/random/uuid)
    ceph_rbd a clone --rbd-default-clone-format 2 "$pool/$snap_image@$snap_image" "$restored"
    local source_id source_index
    source_id=$(jq -r --arg s "$snapshot_id" '.snapshots[] | select(.snapshot_id == $s) | .source_volume_id' <<<"$snap")
    for source_index in "${!members[@]}"; do
      [ "${members[$source_index]: -36}" = "${source_id: -36}" ] && break
    done
    [ "$(sum a "$restored")" = "${sums[$source_index]}" ] ||
      die "$release: member ${members[$source_index]} restored from the group snapshot differs from its data at the snapshot"
    ceph_rbd a rm --no-progress "$restored" >/dev/null 2>&1
    n=$((n + 1))
  done
  [ "$n" = 2 ] || die "$release: the group snapshot has $n members, not 2: $snap"
  "$cli" group-snapshot delete --endpoint "$front" --group-snapshot-id "$(jq -r .group_snapshot_id <<<"$snap")" \
    --secrets-file "$work/secret.json" >/dev/null
  log "$release: group snapshot of 2 volumes, both members restored by clone with their data at the snapshot"

  # SIGTERM, as kubelet stops the pod: out within the grace period, socket gone.
  local start_stop exit_code took
  start_stop=$(date +%s%N)
  pm stop -t "$GRACE" "rbd-addons-image-$release-a" >/dev/null
  took=$((($(date +%s%N) - start_stop) / 1000000))
  exit_code=$(pm inspect --format '{{.State.ExitCode}}' "rbd-addons-image-$release-a")
  [ "$exit_code" = 0 ] || die "$release: the container exited $exit_code after SIGTERM (137: killed at the grace period's end)"
  [ ! -e "$work/site-a/csi-addons.sock" ] || die "$release: the socket is still there after the container exited"
  log "$release: SIGTERM: exited 0 in $took ms (grace $GRACE s), socket removed"
  pm rm -f "rbd-addons-image-$release-a" "rbd-addons-image-$release-b" >/dev/null
  CHECKING=
  for m in "${members[@]}" "$image"; do ceph_rbd a rm --no-progress "$m" >/dev/null 2>&1 || true; done
  log "$release: the image passed in $((SECONDS - t)) s"
}

cmd_all() {
  local releases=${RBD_ADDONS_IMAGE_RELEASES-pacific reef tentacle}
  deps_apt
  trap 'cmd_clean' EXIT
  cmd_build
  local release
  for release in $releases; do
    scripts/lab.sh up --release "$release" >/dev/null
    cmd_check "$release"
    scripts/lab.sh down --release "$release" >/dev/null
  done
}

case "${1:-all}" in
  all) cmd_all ;;
  build) deps_apt && cmd_build ;;
  check) cmd_check "${2:-}" ;;
  clean) cmd_clean ;;
  *)
    echo "usage: scripts/image.sh [build | check pacific|reef|tentacle | clean]" >&2
    exit 2
    ;;
esac
