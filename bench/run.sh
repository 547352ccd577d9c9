#!/bin/sh
# make bench: runs bench/bench.mjs (then bench/ipvs-bench.mjs) inside a throwaway namespace so that it can
# never touch the machine's own network. --pid (with its own /proc) makes every
# stand-in container die with the run even if the script is killed midway.
set -eu
cd "$(dirname "$0")/.."

if [ "${OCINET_BENCH_NS:-}" != 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "bench: must run as root (namespaces, bridges, iptables)" >&2; exit 1; }
  # The IPVS part's test guest is built out here (build-guest.sh may need apt).
  [ "${OCINET_BENCH_IPVS:-1}" = 0 ] || bash build/guest/build-guest.sh
  export OCINET_BENCH_NS=1
  exec unshare --net --mount --propagation private --pid --fork --mount-proc -- "$0" "$@"
fi

ip link set lo up
# State on tmpfs, as on a real host (ocinet's /run/ocinet, Podman's
# /run/containers/networks), for every side alike (the CNI chain's host-local
# data too); the mount is this namespace's own. On this machine's ext4 /tmp,
# each state file write cost the hook 1-2 ms more.
mount -t tmpfs -o mode=1777 ocinet-bench /tmp
export TMPDIR=/tmp
# Not exec: this shell stays PID 1 of the namespace and reaps any orphan.
node bench/bench.mjs "$@"
[ "${OCINET_BENCH_IPVS:-1}" = 0 ] || node bench/ipvs-bench.mjs
