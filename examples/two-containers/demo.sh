#!/bin/bash
# Two runc containers on an ocinet bridge (what `make demo` runs).
#
# Everything happens inside a throwaway network + mount namespace that this
# script re-executes itself in: its own bridge, iptables rules, state dir and
# runc root. The machine's own network is never touched, and when the script
# ends (success, failure or Ctrl-C) the containers are deleted and the
# namespace disappears with everything in it (see ../lib.sh).
#
# Steps: make two busybox bundles whose prestart+poststop hooks run the built
# dist/bin/ocinet-hook; start both with runc (web-a publishes 8080:80 through
# the io.ocinet.publish annotation); show their addresses; ping between them;
# fetch the published port from the host namespace; stop both; show that
# nothing is left. Needs root, `make build`, and runc, busybox, jq, iptables
# (`make setup` installs them). Exits non-zero if any step fails.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

demo_enter_namespace
demo_setup
A=web-a-$$ # ids carry the pid: runc's cgroup paths (/sys/fs/cgroup/*/ID) are machine-wide
B=web-b-$$

# eth0 address as the container itself sees it.
inner_addr() { runc exec "$1" ip -o -4 addr show dev eth0 | awk '{print $4}'; }

printf '%socinet two-container demo%s (network namespace %s, work dir %s)\n' "$bold" "$off" "$(readlink /proc/self/ns/net)" "$work"
echo "below, 'runc' is runc --root $RUNC_ROOT and 'ocinet' is dist/bin/ocinet --state-dir $STATE"

step "A fresh network namespace: only the loopback device, no rules"
show ip -br link
echo "ocinet rules: $(rule_count)"

step "Make two busybox bundles whose prestart+poststop hooks run ocinet-hook"
OCINET_ANNOTATIONS='{"io.ocinet.publish":"8080:80"}' make_bundle web-a
make_bundle web-b
echo "web-a's hooks and annotations:"
jq '{hooks, annotations}' "$work/web-a/config.json"

step "Start both containers with runc (the prestart hook wires each one to the bridge)"
start "$A" "$work/web-a"
start "$B" "$work/web-b"
show runc list

step "Their addresses"
show ocinet list
for id in "$A" "$B"; do
  show runc exec "$id" ip -4 addr show dev eth0
done
ipa=$(inner_addr "$A") ipb=$(inner_addr "$B")
[[ -n $ipa && $ipa == "$(listed "$A")" ]] || die "$A: eth0 has '$ipa', ocinet list says '$(listed "$A")'"
[[ -n $ipb && $ipb == "$(listed "$B")" ]] || die "$B: eth0 has '$ipb', ocinet list says '$(listed "$B")'"
[[ $ipa != "$ipb" ]] || die "both containers got $ipa"
ok "$A has $ipa, $B has $ipb (inside and in ocinet list)"
ipa=${ipa%/*} ipb=${ipb%/*}
show runc exec "$A" ip route
echo "host side: the bridge and the two veth ends on it"
show ip -br addr show dev ocinet0
show ip -br link show master ocinet0
gw=$(ip -o -4 addr show dev ocinet0 | awk '{print $4}' | cut -d/ -f1)

step "Ping between them, and the gateway"
show runc exec "$A" ping -c 2 -i 0.2 -W 2 "$ipb"
show runc exec "$B" ping -c 2 -i 0.2 -W 2 "$ipa"
show runc exec "$A" ping -c 1 -W 2 "$gw"
ok "containers reach each other and the gateway $gw"

step "Fetch web-a's published port 8080 from the host namespace"
echo "ocinet's rules (the nftables backend: its own tables, the container as set and map elements):"
ocinet_rules
fetch "http://127.0.0.1:8080/" "hello from web-a"
fetch "http://$gw:8080/" "hello from web-a"
echo "  (and from web-b through the gateway: hairpin)"
fetch "http://$gw:8080/" "hello from web-a" "$B"
ok "published port answers via 127.0.0.1, the gateway address and from the other container"

step "Stop both containers (the poststop hook tears their networks down)"
stop "$A"
stop "$B"
show runc list

step "Nothing is left"
nothing_left
ok "no links besides lo, no OCINET rules, no containers or leases in $STATE/state.json"
hook_log "hook log (each run of ocinet-hook):"

demo_passed
