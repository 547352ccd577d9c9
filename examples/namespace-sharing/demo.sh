#!/bin/bash
# Network namespace sharing with ocinet.
#
# Runs inside a throwaway network + mount namespace that this script
# re-executes itself in (see ../lib.sh). Container web-a gets a network from
# the hook. Container web-b is started with its config's network namespace
# `path` set to /proc/<web-a's pid>/ns/net (the way pods and sidecars share a
# network) and carries the SAME hook entry: the hook sees the namespace already
# has ocinet's eth0 and only records web-b as sharing it. The demo shows web-b
# has the same eth0 and address, reaches web-a's web server on 127.0.0.1:80,
# that stopping web-b leaves web-a's network intact, and that after stopping
# web-a nothing is left. Needs root, `make build`, runc, busybox, jq, iptables
# (`make setup`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

demo_enter_namespace
demo_setup
A=web-a-$$ # the pid in the ids: runc's cgroup paths (/sys/fs/cgroup/*/ID) are machine-wide
B=web-b-$$

# eth0 as seen inside container ID: "index mac address".
eth0_of() {
  runc exec "$1" cat /sys/class/net/eth0/ifindex /sys/class/net/eth0/address | tr '\n' ' '
  runc exec "$1" ip -o -4 addr show dev eth0 | awk '{print $4}'
}

printf '%socinet namespace-sharing demo%s (network namespace %s, work dir %s)\n' "$bold" "$off" "$(readlink /proc/self/ns/net)" "$work"
echo "below, 'runc' is runc --root $RUNC_ROOT and 'ocinet' is dist/bin/ocinet --state-dir $STATE"

step "Start web-a with the hook (publishing 8080:80)"
OCINET_ANNOTATIONS='{"io.ocinet.publish":"8080:80"}' make_bundle web-a
start "$A" "$work/web-a"
pida=$(runc state "$A" | jq -r .pid)
show runc exec "$A" ip -4 addr show dev eth0
fetch "http://127.0.0.1:8080/" "hello from web-a"

step "Start web-b in web-a's network namespace, with the same hook entry"
OCINET_NETNS_PATH=/proc/$pida/ns/net make_bundle web-b
# Port 80 in the shared namespace belongs to web-a's server: web-b serves on 81.
jq '.process.args = ["httpd", "-f", "-p", "81", "-h", "/www"]' "$work/web-b/config.json" >"$work/web-b/config.json.new"
mv "$work/web-b/config.json.new" "$work/web-b/config.json"
echo "web-b's network namespace entry and process (its server uses port 81: 80 is web-a's):"
jq -c '.linux.namespaces[] | select(.type == "network")' "$work/web-b/config.json"
jq -c '.process.args' "$work/web-b/config.json"
start "$B" "$work/web-b"
pidb=$(runc state "$B" | jq -r .pid)
show ocinet list

step "web-b has the same eth0 and address as web-a"
show runc exec "$B" ip -4 addr show dev eth0
nsa=$(readlink "/proc/$pida/ns/net") nsb=$(readlink "/proc/$pidb/ns/net")
ea=$(eth0_of "$A") eb=$(eth0_of "$B")
echo "web-a: netns $nsa, eth0 (ifindex mac address) $ea"
echo "web-b: netns $nsb, eth0 (ifindex mac address) $eb"
[[ $nsa == "$nsb" ]] || die "web-b is not in web-a's network namespace"
[[ $ea == "$eb" && -n ${ea##* } ]] || die "web-b's eth0 differs from web-a's"
shared=$(listed "$B" sharedWith)
[[ $shared == "$A" ]] || die "ocinet list does not record $B as sharing $A's network (sharedWith='$shared')"
echo "host side: still one veth on the bridge"
show ip -br link show master ocinet0
[[ $(ip -o link show master ocinet0 | wc -l) == 1 ]] || die "expected one veth on the bridge"
ok "same namespace, same eth0, one veth; ocinet records $B as sharing $A"

step "They talk over the shared loopback"
fetch "http://127.0.0.1:80/" "hello from web-a" "$B"
fetch "http://127.0.0.1:81/" "hello from web-b" "$A"
ok "web-b reaches web-a's server on 127.0.0.1:80 (and web-a reaches web-b's on :81)"

step "Stop web-b: web-a's network stays"
stop "$B"
show ocinet list
show runc exec "$A" ip -4 addr show dev eth0
ipa=$(listed "$A")
[[ $(eth0_of "$A") == "$ea" ]] || die "web-a's eth0 changed"
[[ $(ocinet list --json | jq length) == 1 && -n $ipa ]] || die "ocinet list should show web-a alone"
show busybox ping -c 1 -W 2 "${ipa%/*}"
fetch "http://127.0.0.1:8080/" "hello from web-a"
ok "web-a keeps eth0 ${ipa}, its veth and its published port"

step "Stop web-a"
stop "$A"

step "Nothing is left"
nothing_left
ok "no links besides lo, no OCINET rules, no containers or leases"
hook_log "hook log:" '(if .shared then "\tshares \(.shared)" else "" end)'

demo_passed
