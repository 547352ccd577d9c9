#!/bin/bash
# Port forwarding (DNAT) and outbound NAT (MASQUERADE) with ocinet.
#
# Runs inside a throwaway network + mount namespace that this script
# re-executes itself in ("the host" below; see ../lib.sh). A second network
# namespace plays "an outside host" on a link of its own: host 192.0.2.1/24 <->
# outside 192.0.2.2/24 (a veth pair; 192.0.2.0/24 is TEST-NET-1). The outside
# host has no route to the container subnet, so everything it sees goes
# through NAT.
#
# One busybox container publishes 8080:80 through the hook's --publish flag.
#   1. the outside host fetches http://192.0.2.1:8080/  (PREROUTING DNAT)
#   2. the host fetches http://127.0.0.1:8080/          (OUTPUT DNAT + route_localnet)
#   3. the container fetches http://192.0.2.2:9000/ from a listener on the
#      outside host, which answers with the peer address it sees: the host's
#      192.0.2.1, not the container's 10.213.x.y (MASQUERADE)
# then stops the container and shows nothing is left. Needs root, `make build`,
# runc, busybox, jq, iptables, conntrack, node (`make setup`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
NODE=$(command -v node || true)

demo_enter_namespace conntrack nsenter node
demo_setup
discarded="namespaces discarded" # ours and the outside host's
C=web-$$ # the pid in the id: runc's cgroup paths (/sys/fs/cgroup/*/ID) are machine-wide
HOST_IP=192.0.2.1 OUT_IP=192.0.2.2
outside_pid=''

# outside CMD...: run CMD in the outside host's network namespace.
outside() { nsenter --net="/proc/$outside_pid/ns/net" -- "$@"; }
# fetch_outside URL EXPECTED: fetch from the outside host.
fetch_outside() { fetch_with 'outside busybox' "$1" "$2" nsenter --net="/proc/$outside_pid/ns/net" -- busybox; }

printf '%socinet port-forward demo%s (host namespace %s, work dir %s)\n' "$bold" "$off" "$(readlink /proc/self/ns/net)" "$work"
echo "below, 'runc' is runc --root $RUNC_ROOT, 'ocinet' is dist/bin/ocinet --state-dir $STATE,"
echo "and 'outside CMD' runs CMD in the outside host's network namespace"

step "An outside host: a second network namespace, linked to this one by a veth pair"
unshare --net -- sleep infinity &
outside_pid=$!
bg_pids+=("$outside_pid")
self_ns=$(readlink /proc/self/ns/net)
for i in $(seq 100); do
  [[ $(readlink "/proc/$outside_pid/ns/net" 2>/dev/null) != "$self_ns" ]] && break
  sleep 0.02
done
[[ $(readlink "/proc/$outside_pid/ns/net") != "$self_ns" ]] || die "outside namespace did not appear"
show ip link add ocd-host type veth peer name ocd-out netns "$outside_pid"
show ip addr add "$HOST_IP/24" dev ocd-host
show ip link set ocd-host up
outside ip link set lo up
show outside ip addr add "$OUT_IP/24" dev ocd-out
show outside ip link set ocd-out up
for i in $(seq 50); do outside ip -br link show ocd-out | grep -qw UP && break; sleep 0.02; done
show outside ip -br addr
show outside ip route
echo "(the outside host has no route to the container subnet: it only knows 192.0.2.0/24)"

step "A listener on the outside host that answers with the address it sees"
cat >"$work/listener.js" <<'EOF'
// Answers every request with the peer address; logs it to the file in argv[3].
const [ip, log, ready] = process.argv.slice(2);
const fs = require('fs');
require('http')
  .createServer((req, res) => {
    const peer = req.socket.remoteAddress;
    fs.appendFileSync(log, `outside host: request from ${peer}:${req.socket.remotePort}\n`);
    res.end(`outside host ${ip} sees you as ${peer}\n`);
  })
  .listen(9000, ip, () => fs.writeFileSync(ready, ''));
EOF
printf '$ outside node listener.js %s  (port 9000)\n' "$OUT_IP"
nsenter --net="/proc/$outside_pid/ns/net" -- "$NODE" "$work/listener.js" "$OUT_IP" "$work/listener.log" "$work/listener.ready" &
bg_pids+=($!)
for i in $(seq 100); do [[ -e $work/listener.ready ]] && break; sleep 0.05; done
[[ -e $work/listener.ready ]] || die "the listener did not start"
ok "listening on $OUT_IP:9000"

step "Start a container publishing 8080:80 (hook flag --publish)"
make_bundle web --publish 8080:80
jq -c '.hooks.prestart[0].args' "$work/web/config.json"
start "$C" "$work/web"
show ocinet list
cip=$(listed "$C")
cip=${cip%/*}
[[ -n $cip ]] || die "ocinet list has no address for $C"
echo "the rules the hook added:"
ocinet_rules

step "The outside host reaches the container through the host's address (PREROUTING DNAT)"
printf '$ outside busybox ping -c 1 -W 1 %s   (direct: expected to fail)\n' "$cip"
if outside busybox ping -c 1 -W 1 "$cip" 2>&1; then die "the outside host reached $cip directly"; fi
fetch_outside "http://$HOST_IP:8080/" "hello from web"
echo "the connection as the host's conntrack saw it:"
conntrack -L -p tcp --orig-dst "$HOST_IP" --dport 8080 2>/dev/null | sed 's/^/  /'
ok "outside -> $HOST_IP:8080 was forwarded to $cip:80"

step "The host reaches it via 127.0.0.1 and its own addresses (OUTPUT DNAT)"
fetch "http://127.0.0.1:8080/" "hello from web"
fetch "http://$HOST_IP:8080/" "hello from web"
ok "localhost and local-address access to the published port work"

step "The container reaches the outside host, which sees the host's address (MASQUERADE)"
show runc exec "$C" ping -c 1 -W 2 "$OUT_IP"
fetch "http://$OUT_IP:9000/" "outside host $OUT_IP sees you as $HOST_IP" "$C"
show cat "$work/listener.log"
if grep -q "$cip" "$work/listener.log"; then die "the outside host saw the container's own address $cip"; fi
ok "the outside host saw $HOST_IP, never the container's $cip"

step "Stop the container"
stop "$C"

step "Nothing is left (the demo's own veth to the outside host aside)"
nothing_left 'lo|ocd-host@[^:]*' 'lo and ocd-host'
ok "no bridge or container links, no OCINET rules, no containers or leases"
show ip link del ocd-host
hook_log "hook log:"

demo_passed
