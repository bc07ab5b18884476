#!/usr/bin/env bash
# cargo's runner for a reef or tentacle lab (scripts/compat.sh sets it): each
# test binary runs inside that release's Debian root, in the same directory
# (the repository and /tmp are bind-mounted there at their own paths), so
# every Ceph call of a test, its own librados writers included, goes through
# that release's libraries, as the server under test does.
#   scripts/in-lab-root.sh ROOT PROGRAM [ARGS...]
set -euo pipefail
root=${1:?usage: in-lab-root.sh ROOT PROGRAM [ARGS...]}
shift
exec chroot "$root" /usr/bin/env CEPHLAB_IN_ROOT=1 \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  /bin/sh -c 'cd "$0" && exec "$@"' "$PWD" "$@"
