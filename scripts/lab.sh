#!/usr/bin/env bash
# Two real single-node Ceph clusters (site-a, site-b) on 127.0.0.1, with pool
# `replicapool` mirrored both ways by rbd-mirror daemons. Used by the tests and
# the demo; nothing here touches /etc/ceph.
#
#   scripts/lab.sh up     install what is missing, start both sites (idempotent)
#   scripts/lab.sh down   stop what this script started and delete the lab
#   scripts/lab.sh env    print the lab's facts (also in $CEPHLAB_DIR/lab.json)
#   scripts/lab.sh restart-mirror a|b   kill a site's rbd-mirror and start it again
#
# --release pacific|reef|tentacle (or CEPHLAB_RELEASE): pacific is the host's
# Debian 12 packages; reef (Debian 13) and tentacle (Debian sid) run from a
# minimal Debian root under $CEPHLAB_ROOTS (built once with debootstrap, then
# reused), with their own lab dir and ports, so labs of different releases
# never collide. The daemons run chrooted in it on the same loopback; lab.json
# then names the root, and the tests run the server and the CLI inside it.
#
# --netns (or CEPHLAB_NETNS=1, pacific only): each site runs in a network
# namespace of its own, reachable from here through a link of its own, and
# the two sites talk only through a third namespace, the WAN. Then
#
#   scripts/lab.sh partition  cut the WAN (both sites' links to it): every
#                             daemon keeps running, packets between the
#                             sites are dropped, as in a real partition
#   scripts/lab.sh heal       restore it
#
# Addresses are from the benchmarking range 198.18.0.0/15, on links this
# script makes: site-a 198.18.10.1, site-b 198.18.10.2. `down` deletes the
# namespaces it made (and with them their links).
#
# Knobs: CEPHLAB_DIR (/tmp/cephlab[-<release>]), CEPHLAB_PORT_BASE (13300,
# 14300 reef, 15300 tentacle), CEPHLAB_OSD_BYTES (4 GiB), CEPHLAB_TIMEOUT
# (120 s, bound of every wait), CEPHLAB_ROOTS (/var/tmp/rbd-addons-roots).
set -euo pipefail

RELEASE=${CEPHLAB_RELEASE:-pacific}
NETNS=${CEPHLAB_NETNS:-}
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --netns) NETNS=1; shift ;;
    --release) RELEASE=${2:?--release needs pacific, reef or tentacle}; shift 2 ;;
    --release=*) RELEASE=${1#*=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
set -- "${args[@]+"${args[@]}"}"
case "$RELEASE" in
  pacific) SUITE=; default_ports=13300; default_dir=/tmp/cephlab ;;
  reef) SUITE=trixie; default_ports=14300; default_dir=/tmp/cephlab-reef ;;
  tentacle) SUITE=sid; default_ports=15300; default_dir=/tmp/cephlab-tentacle ;;
  *) echo "unknown release ${RELEASE@Q}: use pacific, reef or tentacle" >&2; exit 2 ;;
esac

LAB=${CEPHLAB_DIR:-$default_dir}
PORT_BASE=${CEPHLAB_PORT_BASE:-$default_ports}
OSD_BYTES=${CEPHLAB_OSD_BYTES:-4294967296}
TIMEOUT=${CEPHLAB_TIMEOUT:-120}
ROOTS=${CEPHLAB_ROOTS:-/var/tmp/rbd-addons-roots}
ROOT=$ROOTS/$RELEASE
REPO=$(cd "$(dirname "$0")/.." && pwd)
POOL=replicapool
NAMESPACE=tenant-a
CSI_USER=csi-rbd
CLUSTER_ID=rook-ceph
SITES=(a b)

log() { printf '[lab %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

site_dir() { echo "$LAB/$1"; }
site_name() { echo "site-$1"; }
peer_of() { if [ "$1" = a ]; then echo b; else echo a; fi; }
port_base() { if [ "$1" = a ]; then echo "$PORT_BASE"; else echo $((PORT_BASE + 100)); fi; }
# A namespaced lab says so in its directory, so that later commands (down,
# partition, heal) need no flag.
if [ -e "$LAB/netns" ]; then NETNS=1; fi
if [ -n "$NETNS" ] && [ "$RELEASE" != pacific ]; then
  echo "--netns is for the pacific lab only" >&2; exit 2
fi
# Namespace names carry a tag of the lab's directory: labs in other
# directories never touch each other's.
NS_TAG=rl$(printf '%s' "$LAB" | md5sum | cut -c1-6)
ns_of() { echo "$NS_TAG-$1"; }
WAN=$(ns_of w)
site_ip() {
  if [ -z "$NETNS" ]; then echo 127.0.0.1; elif [ "$1" = a ]; then echo 198.18.10.1; else echo 198.18.10.2; fi
}
mon_host() {
  local p ip; p=$(port_base "$1"); ip=$(site_ip "$1")
  echo "[v2:$ip:$p,v1:$ip:$((p + 1))]"
}

# Site S: lo holds its address; `m0` is its link to this host (198.18.S.0/30,
# S = 1 for a, 2 for b); `w0` its link to the WAN (198.18.0.0/30 for a,
# 198.18.0.4/30 for b). Routes to the other site go only through the WAN.
net_up() {
  local s n host_if
  if ip netns list | grep -q "^$NS_TAG-"; then net_down; fi
  if ip route show 198.18.10.0/24 | grep -v "dev $NS_TAG-" | grep -q .; then
    die "198.18.10.0/24 is routed by something else (another namespaced lab?): $(ip route show 198.18.10.0/24)"
  fi
  ip netns add "$WAN"
  ip netns exec "$WAN" sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward'
  ip -n "$WAN" link set lo up
  for s in a b; do
    n=$([ "$s" = a ] && echo 1 || echo 2)
    local ns w_site w_wan m_site m_here
    ns=$(ns_of "$s")
    # /30 pairs: WAN side .1/.5, site side .2/.6.
    w_wan=198.18.0.$(((n - 1) * 4 + 1)); w_site=198.18.0.$(((n - 1) * 4 + 2))
    m_here=198.18.$n.1; m_site=198.18.$n.2
    host_if=$NS_TAG-$s
    ip netns add "$ns"
    echo "$ns" >>"$LAB/netns"
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$(site_ip "$s")/32" dev lo
    ip link add "$host_if" type veth peer name m0 netns "$ns"
    ip addr add "$m_here/30" dev "$host_if"
    ip link set "$host_if" up
    ip -n "$ns" addr add "$m_site/30" dev m0
    ip -n "$ns" link set m0 up
    ip route replace "$(site_ip "$s")/32" via "$m_site" dev "$host_if"
    ip -n "$WAN" link add "w$s" type veth peer name w0 netns "$ns"
    ip -n "$WAN" addr add "$w_wan/30" dev "w$s"
    ip -n "$ns" addr add "$w_site/30" dev w0
    ip -n "$ns" link set w0 up
    # The site's own address as the source: the peer knows only that one.
    ip -n "$ns" route add "$(site_ip "$(peer_of "$s")")/32" via "$w_wan" dev w0 src "$(site_ip "$s")"
  done
  heal
}

# The WAN's two links come up and their routes back; idempotent.
heal() {
  local s n
  for s in a b; do
    n=$([ "$s" = a ] && echo 1 || echo 2)
    ip -n "$WAN" link set "w$s" up
    ip -n "$WAN" route replace "$(site_ip "$s")/32" via "198.18.0.$(((n - 1) * 4 + 2))" dev "w$s"
  done
}

# Both WAN links go down: each site still has its route to the other, on a
# link without carrier, so what it sends is dropped without an error (a
# partition, not a refusal); this host still reaches both sites.
partition() {
  ip -n "$WAN" link set wa down
  ip -n "$WAN" link set wb down
}

# Deletes exactly the links and namespaces this lab made (the host's routes
# to the sites go with their links). A namespace's own veth ends go with it.
net_down() {
  local s ns
  for s in a b; do
    if ip link show "$NS_TAG-$s" >/dev/null 2>&1; then ip link delete "$NS_TAG-$s"; fi
  done
  for ns in $(ip netns list | awk '{print $1}' | grep "^$NS_TAG-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    ip netns delete "$ns"
  done
}

# Every CLI call is bounded: a cluster that is not up must not hang the script.
ceph_at() { local s=$1; shift; timeout 60 ceph --connect-timeout 20 -c "$(site_dir "$s")/ceph.conf" "$@"; }
rbd_at() { local s=$1; shift; timeout 60 rbd -c "$(site_dir "$s")/ceph.conf" "$@"; }

# wait_for DESCRIPTION COMMAND...: poll until COMMAND succeeds, at most $TIMEOUT s.
wait_for() {
  local what=$1; shift
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.5
  done
}

install_packages() {
  local need=()
  for bin in ceph-mon ceph-mgr ceph-osd rbd-mirror ceph rbd jq uuidgen; do
    command -v "$bin" >/dev/null 2>&1 || need+=("$bin")
  done
  [ -e /usr/share/ceph/mgr/rbd_support ] || need+=(mgr-modules)
  [ "${#need[@]}" -eq 0 ] && return 0
  log "installing Ceph packages (missing: ${need[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends ceph-mon ceph-mgr ceph-osd rbd-mirror \
    ceph-common ceph-mgr-modules-core jq uuid-runtime >/dev/null
}

# start_daemon SITE NAME CWD COMMAND...: run detached in its own session and record
# the real PID (the sh wrapper execs the daemon, so $$ is the daemon's PID).
start_daemon() {
  local s=$1 name=$2 cwd=$3; shift 3
  local d; d=$(site_dir "$s")
  local pidfile="$d/run/$name.pid"
  # A restarted daemon's pidfile still names its killed predecessor: waited
  # on as it is, that pid would go into $LAB/pids and the new daemon would
  # be nobody's (never frozen by a test, never stopped by `down`).
  rm -f "$pidfile"
  # setsid -f forks, so no shell of ours stays behind holding the caller's pipes.
  local netns=()
  if [ -n "$NETNS" ]; then netns=(ip netns exec "$(ns_of "$s")"); fi
  (cd "$cwd" && exec setsid -f "${netns[@]}" sh -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
    >"$d/log/$name.stdout" 2>&1 </dev/null)
  local deadline=$((SECONDS + 10))
  until [ -s "$pidfile" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "$name on site-$s did not start"
    sleep 0.1
  done
  echo "$(site_name "$s") $name $(cat "$pidfile")" >>"$LAB/pids"
}

write_conf() {
  local s=$1 fsid=$2
  local d; d=$(site_dir "$s")
  local p; p=$(port_base "$s")
  cat >"$d/ceph.conf" <<EOF
[global]
fsid = $fsid
mon_host = $(mon_host "$s")
public_addr = $(site_ip "$s")
cluster_addr = $(site_ip "$s")
ms_bind_ipv6 = false
ms_bind_port_min = $((p + 10))
ms_bind_port_max = $((p + 99))
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = $d/\$name.keyring
run_dir = $d/run
log_file = $d/log/\$name.log
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
osd_crush_chooseleaf_type = 0
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 2
mon_data_avail_crit = 1
mon_osd_initial_require_min_compat_client = mimic
mgr_service_beacon_grace = 15

[mon]
mon_data = $d/mon
keyring = $d/mon/keyring
# Every snapshot allocates a snap id through an OSDMap proposal; the default 1 s
# batching makes each snapshot, promote and demote ~10x slower.
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
mgr_initial_modules = iostat

[mgr]
mgr_data = $d/mgr
mgr_disabled_modules = alerts cephadm dashboard diskprediction_local influx insights k8sevents localpool mds_autoscaler mirroring nfs osd_perf_query osd_support prometheus restful rook selftest snap_schedule stats telegraf test_orchestrator zabbix

[osd]
osd_data = $d/osd
# Pacific's default; Debian's Reef and Tentacle builds default to a RELATIVE
# path, and every object-class call (rbd namespaces, mirroring) then fails
# with EOPNOTSUPP.
osd_class_dir = /usr/lib/x86_64-linux-gnu/rados-classes
osd_objectstore = memstore
memstore_device_bytes = $OSD_BYTES
osd_fast_shutdown = false
# The drills thaw a frozen lone OSD by marking it down (its PGs stay "laggy"
# otherwise); past 5 marks in 10 minutes an OSD shuts itself down for good.
osd_max_markdown_count = 1000
# Memstore's omap iterators are not safe against a concurrent erase: two PGs
# trimming snapshots at once (both walk and erase the OSD's one SnapMapper
# object) crashed a Pacific OSD in MemStore::OmapIteratorImpl::value (seen
# once in a rehearsal, in the freeze drills). One trimming PG at a time.
osd_max_trimming_pgs = 1

[client]
# Without these a client waits forever on a cluster whose PGs are not active.
rados_mon_op_timeout = 30
rados_osd_op_timeout = 30
rbd_mirror_image_state_check_interval = 1
rbd_mirror_pool_replayers_refresh_interval = 5
rbd_mirror_delete_retry_interval = 5
rbd_mirror_journal_poll_age = 1

# rbd-mirror itself runs at Ceph's defaults, as in production: no op timeouts
# on its own cluster, nor (below) on the peer's. After a site loss its
# replayers then wait on the lost site for ever, and a forced promote has to
# take a member from it (the server breaks its lock; see docs/volume-groups.md).
[client.rbd-mirror.$s]
rados_mon_op_timeout = 0
rados_osd_op_timeout = 0
EOF
  # rbd-mirror opens the peer cluster under the peer's site name and reads
  # ./<site-name>.conf from its working directory: keep its sockets in the lab.
  printf '[global]\nrun_dir = %s/run\nlog_file = %s/log/peer-$name.log\n' \
    "$d" "$d" >"$d/$(site_name "$(peer_of "$s")").conf"
}

osd_up() { [ "$(ceph_at "$1" osd stat -f json | jq .num_up_osds)" = 1 ]; }
mgr_up() { ceph_at "$1" mgr stat -f json | jq -e '.available == true'; }
pgs_active() {
  ceph_at "$1" pg stat -f json | jq -e '.pg_summary.num_pgs > 0 and
    ([.pg_summary.num_pg_by_state[] | select(.name != "active+clean") | .num] | add // 0) == 0'
}

create_site() {
  local s=$1 fsid=$2
  local d; d=$(site_dir "$s")
  mkdir -p "$d"/{mon,mgr,osd,run,log}
  write_conf "$s" "$fsid"

  # The seed keyring and monmap live outside mon_data: mkfs silently does
  # nothing when mon_data is not empty.
  ceph-authtool "$d/seed.keyring" --create-keyring --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$d/client.admin.keyring" --create-keyring --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
  ceph-authtool "$d/seed.keyring" --import-keyring "$d/client.admin.keyring" >/dev/null
  monmaptool --create --fsid "$fsid" --addv "$s" "$(mon_host "$s")" "$d/monmap" >/dev/null
  ceph-mon -c "$d/ceph.conf" --mkfs -i "$s" --monmap "$d/monmap" --keyring "$d/seed.keyring" \
    >"$d/log/mon-mkfs.log" 2>&1
  [ -e "$d/mon/store.db/CURRENT" ] || die "ceph-mon --mkfs on site-$s created no store"
  start_daemon "$s" mon "$d" ceph-mon -c "$d/ceph.conf" -i "$s" -f
  wait_for "mon on site-$s" ceph_at "$s" mon stat

  ceph_at "$s" auth get-or-create "mgr.$s" mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
    -o "$d/mgr.$s.keyring"
  start_daemon "$s" mgr "$d" ceph-mgr -c "$d/ceph.conf" -i "$s" -f

  local uuid key
  uuid=$(uuidgen)
  ceph-authtool "$d/osd.0.keyring" --create-keyring --gen-key -n osd.0 >/dev/null
  key=$(ceph-authtool -p -n osd.0 "$d/osd.0.keyring")
  printf '{"cephx_secret": "%s"}' "$key" >"$d/osd-secret.json"
  ceph_at "$s" osd new "$uuid" -i "$d/osd-secret.json" >/dev/null
  rm -f "$d/osd-secret.json"
  ceph-osd -c "$d/ceph.conf" -i 0 --mkfs --osd-uuid "$uuid" >"$d/log/osd-mkfs.log" 2>&1
  start_daemon "$s" osd "$d" ceph-osd -c "$d/ceph.conf" -i 0 -f
  wait_for "osd on site-$s" osd_up "$s"
  wait_for "mgr on site-$s" mgr_up "$s"

  # On site-b a padding pool is created first, so that replicapool's ID differs
  # between the sites, as it does in real deployments.
  if [ "$s" = b ]; then
    ceph_at "$s" osd pool create padding 1 1 >/dev/null 2>&1
    ceph_at "$s" osd pool set padding size 1 --yes-i-really-mean-it >/dev/null 2>&1
  fi
  ceph_at "$s" osd pool create "$POOL" 8 8 >/dev/null 2>&1
  ceph_at "$s" osd pool set "$POOL" size 1 --yes-i-really-mean-it >/dev/null 2>&1
  rbd_at "$s" pool init "$POOL"
  rbd_at "$s" namespace create "$POOL/$NAMESPACE"
  rbd_at "$s" mirror pool enable --site-name "$(site_name "$s")" "$POOL" image
  rbd_at "$s" mirror pool enable "$POOL/$NAMESPACE" image
  wait_for "active PGs on site-$s" pgs_active "$s"

  ceph_at "$s" auth get-or-create "client.rbd-mirror.$s" mon 'profile rbd-mirror' osd 'profile rbd' \
    -o "$d/client.rbd-mirror.$s.keyring"
  ceph_at "$s" auth import -i "$LAB/client.$CSI_USER.keyring" >/dev/null 2>&1
}

mirror_ready() {
  local s=$1 sock
  # A client's admin socket name carries its PID; there is one rbd-mirror per site.
  sock=$(compgen -G "$(site_dir "$s")/run/ceph-client.rbd-mirror.$s.*.asok" | head -n 1) || return 1
  timeout 10 ceph --admin-daemon "$sock" rbd mirror status -f json 2>/dev/null |
    jq -e --arg peer "$(site_name "$(peer_of "$s")")" \
      '[.pool_replayers[] | select(.state == "running" and .leader == true
         and (.peer | contains("cluster: " + $peer)))] | length == 1'
}

pool_id() { ceph_at "$1" osd pool ls detail -f json | jq -r --arg p "$POOL" '.[] | select(.pool_name == $p) | .pool_id'; }

write_facts() {
  local key
  key=$(ceph-authtool -p -n "client.$CSI_USER" "$LAB/client.$CSI_USER.keyring")
  for s in "${SITES[@]}"; do
    local d; d=$(site_dir "$s")
    # ceph-csi's config.json: the same clusterID on both sites (as Rook names it
    # after the namespace), plus one entry that puts volumes in a RADOS namespace.
    jq -n --arg mon "$(mon_host "$s")" --arg id "$CLUSTER_ID" --arg ns "$NAMESPACE" \
      '[{clusterID: $id, monitors: [$mon]},
        {clusterID: ($id + "-" + $ns), monitors: [$mon], rbd: {radosNamespace: $ns}}]' \
      >"$d/csi-config.json"
    # After a failover the caller holds handles minted on the other site: the
    # clusterID is the same, the pool IDs differ.
    jq -n --arg id "$CLUSTER_ID" --arg a "$(pool_id a)" --arg b "$(pool_id b)" \
      '[{clusterIDMapping: {($id): $id}, RBDPoolIDMapping: [{($a): $b}]}]' >"$d/cluster-mapping.json"
  done
  jq -n --arg dir "$LAB" --arg pool "$POOL" --arg ns "$NAMESPACE" --arg user "$CSI_USER" \
    --arg key "$key" --arg cid "$CLUSTER_ID" --arg release "$RELEASE" \
    --arg amon "$(mon_host a)" --arg bmon "$(mon_host b)" \
    --argjson apool "$(pool_id a)" --argjson bpool "$(pool_id b)" \
    --argjson netns "$(if [ -n "$NETNS" ]; then jq -n --arg a "$(ns_of a)" --arg b "$(ns_of b)" '{a: $a, b: $b}'; else echo null; fi)" \
    '{dir: $dir, release: $release, pool: $pool, namespace: $ns, user: $user, key: $key, cluster_id: $cid,
      netns: $netns,
      sites: {
        a: {name: "site-a", conf: ($dir + "/a/ceph.conf"), mon_host: $amon, pool_id: $apool,
            csi_config: ($dir + "/a/csi-config.json"), cluster_mapping: ($dir + "/a/cluster-mapping.json")},
        b: {name: "site-b", conf: ($dir + "/b/ceph.conf"), mon_host: $bmon, pool_id: $bpool,
            csi_config: ($dir + "/b/csi-config.json"), cluster_mapping: ($dir + "/b/cluster-mapping.json")}}}' >"$LAB/lab.json"
  chmod 600 "$LAB/lab.json"
  cat >"$LAB/env.sh" <<EOF
export CEPHLAB_DIR=$LAB
export CEPH_CONF_A=$LAB/a/ceph.conf
export CEPH_CONF_B=$LAB/b/ceph.conf
export CEPHLAB_CSI_USER=$CSI_USER
export CEPHLAB_CSI_CONFIG_A=$LAB/a/csi-config.json
export CEPHLAB_CSI_CONFIG_B=$LAB/b/csi-config.json
export CEPHLAB_POOL_ID_A=$(pool_id a)
export CEPHLAB_POOL_ID_B=$(pool_id b)
EOF
}

is_running() {
  [ -s "$LAB/pids" ] && [ -s "$LAB/lab.json" ] || return 1
  local site name pid
  while read -r site name pid; do
    owned "$pid" || return 1
  done <"$LAB/pids"
  for s in "${SITES[@]}"; do pgs_active "$s" >/dev/null 2>&1 || return 1; done
}

# owned PID: the process is alive and is one of ours (guards against PID reuse).
owned() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q -- "$LAB/"; }

cmd_down() {
  if [ -s "$LAB/pids" ]; then
    local site name pid pids=()
    while read -r site name pid; do
      if owned "$pid"; then kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); fi
    done <"$LAB/pids"
    local deadline=$((SECONDS + 15))
    for pid in "${pids[@]}"; do
      while owned "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
      if owned "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
  fi
  if [ -n "$NETNS" ]; then net_down; fi
  if [ "${1:-}" != --keep ]; then rm -rf "$LAB"; fi
  log "down"
}

cmd_up() {
  install_packages
  if is_running; then log "already up"; write_facts; cmd_env; return 0; fi
  cmd_down
  local start=$SECONDS
  mkdir -p "$LAB"
  chmod 700 "$LAB"
  : >"$LAB/pids"
  if [ -n "$NETNS" ]; then
    : >"$LAB/netns"
    net_up
  fi
  ceph-authtool "$LAB/client.$CSI_USER.keyring" --create-keyring --gen-key -n "client.$CSI_USER" \
    --cap mon 'profile rbd, allow command "osd blocklist"' --cap osd "profile rbd pool=$POOL" --cap mgr 'allow rw' >/dev/null
  for s in "${SITES[@]}"; do create_site "$s" "$(uuidgen)"; done

  for s in "${SITES[@]}"; do start_mirror "$s"; done
  rbd_at a mirror pool peer bootstrap create --site-name site-a "$POOL" >"$LAB/bootstrap-token"
  rbd_at b mirror pool peer bootstrap import --site-name site-b --direction rx-tx \
    "$POOL" "$LAB/bootstrap-token" 2>>"$LAB/b/log/bootstrap.log"
  for s in "${SITES[@]}"; do wait_for "rbd-mirror leader on site-$s" mirror_ready "$s"; done
  write_facts
  log "up in $((SECONDS - start)) s"
  cmd_env
}

start_mirror() {
  local s=$1 d; d=$(site_dir "$1")
  # CEPH_CONF too: Tentacle's rbd-mirror connects to its local cluster through
  # a context of its own that does not inherit -c, and then looks for
  # /etc/ceph/ceph.conf ("init_rados: error connecting to local cluster: (2)").
  start_daemon "$s" rbd-mirror "$d" env CEPH_CONF="$d/ceph.conf" rbd-mirror -c "$d/ceph.conf" --id "rbd-mirror.$s" -f
}

# A site's rbd-mirror killed and started again, as an admin restarts a daemon
# that no longer works (rbd-mirror 16.2.15 can deadlock when its client is
# blocklisted while it deletes an image; see docs/ceph-releases.md).
cmd_restart_mirror() {
  local s=${1:?usage: lab.sh restart-mirror a|b} pid
  [ -s "$LAB/pids" ] || die "no lab at $LAB"
  pid=$(awk -v n="$(site_name "$s")" '$1 == n && $2 == "rbd-mirror" {print $3}' "$LAB/pids")
  if [ -n "$pid" ] && owned "$pid"; then
    kill -KILL "$pid"
    while owned "$pid"; do sleep 0.1; done
  fi
  sed -i "/^$(site_name "$s") rbd-mirror /d" "$LAB/pids"
  rm -f "$(site_dir "$s")"/run/ceph-client.rbd-mirror."$s".*.asok
  start_mirror "$s"
  wait_for "rbd-mirror leader on site-$s" mirror_ready "$s"
  log "rbd-mirror on site-$s restarted"
}

cmd_env() {
  [ -s "$LAB/lab.json" ] || die "no lab at $LAB: run scripts/lab.sh up"
  cat "$LAB/env.sh"
  echo "# facts (incl. the CSI user's key): $LAB/lab.json"
}

# A Debian root with this release's Ceph, built once: debootstrap from the
# host's own Debian mirror, daemons' postinst kept from starting services.
ensure_root() {
  [ -e "$ROOT/.ready" ] && return 0
  export DEBIAN_FRONTEND=noninteractive
  command -v debootstrap >/dev/null || { apt-get update -q >/dev/null; apt-get install -y -q debootstrap >/dev/null; }
  local mirror
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || die "no Debian mirror found in the host's apt sources"
  log "building a Debian $SUITE root for Ceph $RELEASE in $ROOT (once)"
  rm -rf "$ROOT.new"
  mkdir -p "$ROOTS"
  debootstrap --variant=minbase "$SUITE" "$ROOT.new" "$mirror" >"$ROOTS/$RELEASE-debootstrap.log" 2>&1 ||
    die "debootstrap $SUITE failed; see $ROOTS/$RELEASE-debootstrap.log"
  printf '#!/bin/sh\nexit 101\n' >"$ROOT.new/usr/sbin/policy-rc.d"
  printf '#!/bin/sh\nexit 0\n' >"$ROOT.new/usr/local/bin/systemctl"
  chmod +x "$ROOT.new/usr/sbin/policy-rc.d" "$ROOT.new/usr/local/bin/systemctl"
  # sid's Release file is older than its Valid-Until.
  echo 'Acquire::Check-Valid-Until "false";' >"$ROOT.new/etc/apt/apt.conf.d/99rbd-addons-lab"
  cp /etc/resolv.conf "$ROOT.new/etc/resolv.conf" 2>/dev/null || true
  mount --bind /proc "$ROOT.new/proc"
  mount --bind /dev "$ROOT.new/dev"
  local rc=0
  chroot "$ROOT.new" sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends \
      ceph-mon ceph-mgr ceph-osd rbd-mirror ceph-common ceph-mgr-modules-core jq uuid-runtime \
      python3-cffi-backend; dpkg --configure -a' >"$ROOTS/$RELEASE-packages.log" 2>&1 || rc=$?
  umount "$ROOT.new/dev" "$ROOT.new/proc"
  [ "$rc" -eq 0 ] || die "installing Ceph $RELEASE failed; see $ROOTS/$RELEASE-packages.log"
  older_bcrypt "$ROOT.new"
  rm -rf "$ROOT"
  mv "$ROOT.new" "$ROOT"
  touch "$ROOT/.ready"
}

# Debian 13's python3-bcrypt is a Rust (PyO3) extension, which refuses the
# mgr's Python subinterpreters, and Ceph's mgr_util imports it at load: every
# mgr module fails ("PyO3 modules do not yet support subinterpreters"),
# rbd_support included, so there are no snapshot schedules. Ceph's own images
# ship an older bcrypt; so does the lab: 3.2.2, a C extension (abi3 wheel from
# PyPI), ahead of Debian's on the root's Python path.
older_bcrypt() {
  local root=$1 minor pip wheels site
  minor=$(chroot "$root" python3 -c 'import sys; print(sys.version_info.minor)')
  pip=$REPO/target/venv/bin/pip
  if [ ! -x "$pip" ]; then
    python3 -m venv "$ROOTS/venv" >/dev/null 2>&1 || {
      apt-get install -y -q --no-install-recommends python3-venv >/dev/null; python3 -m venv "$ROOTS/venv"; }
    pip=$ROOTS/venv/bin/pip
  fi
  wheels=$(mktemp -d)
  "$pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --implementation cp --abi abi3 --python-version "3.$minor" -d "$wheels" bcrypt==3.2.2 ||
    die "cannot download bcrypt 3.2.2 for the $RELEASE root"
  site=/usr/local/lib/python3.$minor/dist-packages
  mkdir -p "$root$site"
  "$(dirname "$pip")/python" -m zipfile -e "$wheels"/bcrypt-*.whl "$root$site"
  rm -rf "$wheels"
}

# The paths the lab, the repository (server binary, scripts) and the tests
# share with the root are bind-mounted at the same place inside it.
ROOT_MOUNTS=(/proc /dev /tmp)
mount_root() {
  local d
  for d in "${ROOT_MOUNTS[@]}" "$REPO"; do
    mkdir -p "$ROOT$d"
    mountpoint -q "$ROOT$d" || mount --bind "$d" "$ROOT$d"
  done
}
umount_root() {
  local d
  for d in "$REPO" /tmp /dev /proc; do
    if mountpoint -q "$ROOT$d" 2>/dev/null; then umount -l "$ROOT$d"; fi
  done
}

# Outside the root, a reef or tentacle lab is this same script run inside it.
in_root() {
  chroot "$ROOT" env CEPHLAB_IN_ROOT=1 CEPHLAB_RELEASE="$RELEASE" CEPHLAB_DIR="$LAB" \
    CEPHLAB_PORT_BASE="$PORT_BASE" CEPHLAB_OSD_BYTES="$OSD_BYTES" CEPHLAB_TIMEOUT="$TIMEOUT" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin bash "$REPO/scripts/lab.sh" "$@"
}

if [ -n "$SUITE" ] && [ -z "${CEPHLAB_IN_ROOT:-}" ]; then
  case "${1:-}" in
    up)
      ensure_root
      mount_root
      in_root up >/dev/null
      jq --arg root "$ROOT" '. + {root: $root}' "$LAB/lab.json" >"$LAB/lab.json.new"
      mv "$LAB/lab.json.new" "$LAB/lab.json"
      chmod 600 "$LAB/lab.json"
      cmd_env
      ;;
    down)
      shift
      if [ -x "$ROOT/usr/bin/ceph" ] && mountpoint -q "$ROOT/tmp" 2>/dev/null; then in_root down "$@"; fi
      umount_root
      ;;
    env) cmd_env ;;
    restart-mirror) in_root "$@" ;;
    *) echo "usage: $0 up|down [--keep]|env|restart-mirror a|b [--release pacific|reef|tentacle]" >&2; exit 2 ;;
  esac
  exit 0
fi

case "${1:-}" in
  up) cmd_up ;;
  down) shift; cmd_down "$@" ;;
  env) cmd_env ;;
  restart-mirror) cmd_restart_mirror "${2:-}" ;;
  partition | heal)
    [ -n "$NETNS" ] || die "$1: the lab at $LAB is not namespaced (scripts/lab.sh up --netns)"
    "$1"
    log "$1"
    ;;
  *) echo "usage: $0 up [--netns]|down [--keep]|env|restart-mirror a|b|partition|heal [--release pacific|reef|tentacle]" >&2; exit 2 ;;
esac
