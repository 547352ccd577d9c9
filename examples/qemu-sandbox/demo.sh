#!/bin/bash
# A QEMU VM sandbox on the ocinet bridge: the hook in TAP mode.
#
# Boots the test guest (build/guest: Debian's cloud kernel and a busybox
# initramfs running qemu-ga; QEMU with TCG, no NIC) inside a throwaway network
# + mount namespace that this script re-executes itself in (see ../lib.sh),
# then runs the hook the way runc would, with an OCI state whose annotations
# say io.ocinet.mode=tap and name QEMU's QMP and guest-agent sockets. The hook
#   - creates the bridge ocinet0 (10.213.0.0/16) and a TAP on it,
#   - hot-plugs the TAP into QEMU as a virtio NIC over QMP,
#   - configures eth0 (address, MTU) and the default route in the guest
#     through the guest agent,
#   - publishes 8080:80 (DNAT into the VM).
# Then it shows both sides, pings the guest, fetches a page from a web server
# in the guest through the published port, tears the network down (status
# "stopped"), shows the NIC gone from the guest and nothing left on the host,
# and stops QEMU. Needs root, `make build`, node, QEMU (`make setup`); the guest
# is built on first use (build/guest/build-guest.sh, as `make guest`; needs apt).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

# Build (or find cached) the guest while still outside: it may need apt and the
# network, which the namespace does not have. Same test as demo_enter_namespace.
if [[ ${OCINET_DEMO_NS:-} != "$$ "* || $(readlink /proc/self/ns/net) == "${OCINET_DEMO_NS#* }" ]]; then
  [[ $(id -u) == 0 ]] || { echo "demo: run as root (the hook and build-guest.sh need it)" >&2; exit 1; }
  bash "$top/build/guest/build-guest.sh" || { echo "demo: building the test guest failed" >&2; exit 1; }
fi
demo_enter_namespace node qemu-system-x86_64
demo_setup
VM=vm-$$ # the sandbox id
G=$work/guest # QEMU's sockets, pid file and console log

# QEMU daemonizes: its pid is only in the pid file, which may appear even when
# the boot is interrupted. Stop it before lib.sh's cleanup removes the work dir
# (its namespace, with the TAP, goes away with it).
qemu_pid() { cat "$G/qemu.pid" 2>/dev/null; }
qemu_alive() { local p; p=$(qemu_pid) && [[ -n $p && $(cat "/proc/$p/comm" 2>/dev/null) == qemu-system-* ]]; }
stop_qemu() {
  local i
  qemu_alive || return 0
  kill "$(qemu_pid)" 2>/dev/null || true
  for i in $(seq 100); do qemu_alive || return 0; sleep 0.05; done
  kill -KILL "$(qemu_pid)" 2>/dev/null || true
}
qemu_cleanup() {
  local rc=$?
  set +e # (no errexit in a trap: cleanup must run, and gets our status)
  stop_qemu
  return "$rc"
}
trap 'qemu_cleanup; cleanup' EXIT

# hook STATUS [PID]: run the built hook as runc would (empty environment, the
# OCI state on stdin) with the TAP-mode annotations; echoes the state first.
hook() {
  local st
  st=$(jq -cn --arg id "$VM" --arg status "$1" --arg pid "${2:-}" --arg g "$G" '
    {ociVersion: "1.0.2", id: $id, status: $status} + (if $pid == "" then {} else {pid: ($pid | tonumber)} end)
    + {bundle: "/nonexistent", annotations: {"io.ocinet.mode": "tap", "io.ocinet.qmp": "\($g)/qmp.sock",
       "io.ocinet.qga": "\($g)/qga.sock", "io.ocinet.publish": "8080:80"}}')
  printf "$ echo '%s' \\\\\n    | env -i dist/bin/ocinet-hook --state-dir %s --allow-vm-sockets %s\n" "$st" "$STATE" "$G"
  env -i "$HOOK" --state-dir "$STATE" --allow-vm-sockets "$G" <<<"$st" | tee "$work/hook.out"
}

# guest PATH [ARG...]: run PATH in the guest through its agent (guest-exec,
# then guest-exec-status until it exits); prints its output, returns its exit
# status. `gsh` is the same, echoed first.
cat >"$work/guest-exec.mjs" <<'EOF'
// node guest-exec.mjs QGA_SOCKET PATH [ARG...]: guest-sync, guest-exec, poll guest-exec-status.
import net from 'node:net';
const [sock, path, ...arg] = process.argv.slice(2);
const fail = (m) => { console.error(`guest: ${m}`); process.exit(125); };
setTimeout(() => fail('no answer from the guest agent within 20 s'), 20_000);
const c = net.connect(sock);
const send = (o) => c.write(JSON.stringify(o) + '\n');
const id = 1 + Math.floor(Math.random() * 2 ** 30);
let phase = 'sync', pid, buf = '';
c.on('error', (e) => fail(`${sock}: ${e.message}`));
c.on('close', () => fail('agent socket closed (QEMU exited?)'));
// 0xFF resets the agent's parser; replies before our guest-sync's are stale.
c.on('connect', () => c.write(`\xff${JSON.stringify({ execute: 'guest-sync', arguments: { id } })}\n`, 'latin1'));
c.on('data', (d) => {
  buf += d.toString('latin1');
  for (let i; (i = buf.indexOf('\n')) >= 0; ) {
    const line = buf.slice(0, i).replace(/^[^{]*/, '');
    buf = buf.slice(i + 1);
    try { reply(JSON.parse(line)); } catch (e) { if (!(e instanceof SyntaxError)) throw e; }
  }
});
const poll = () => send({ execute: 'guest-exec-status', arguments: { pid } });
function reply(m) {
  if (phase === 'sync') {
    if (m.return !== id) return;
    phase = 'exec';
    return send({ execute: 'guest-exec', arguments: { path, arg, 'capture-output': true } });
  }
  if (m.error) fail(`${phase}: ${m.error.desc}`);
  if (phase === 'exec') { pid = m.return.pid; phase = 'status'; return poll(); }
  const st = m.return;
  if (!st.exited) return setTimeout(poll, 20);
  if (st['out-data']) process.stdout.write(Buffer.from(st['out-data'], 'base64'));
  if (st['err-data']) process.stderr.write(Buffer.from(st['err-data'], 'base64'));
  c.removeAllListeners('close');
  c.destroy();
  process.exit(st.exitcode ?? 128 + (st.signal ?? 0));
}
EOF
guest() { node "$work/guest-exec.mjs" "$G/qga.sock" "$@"; }
gsh() {
  local a shown=()
  for a in "$@"; do [[ $a == *[[:space:]\&\>\|\;]* ]] && a="'$a'"; shown+=("$a"); done
  printf '$ guest %s\n' "${shown[*]}"
  guest "$@"
}
GIP=/usr/sbin/ip BB=/bin/busybox # the guest's iproute2 and busybox (build-guest.sh)

printf '%socinet QEMU sandbox demo%s (host namespace %s, work dir %s)\n' "$bold" "$off" "$(readlink /proc/self/ns/net)" "$work"
echo "below, 'ocinet' is dist/bin/ocinet --state-dir $STATE, and 'guest CMD' runs CMD"
echo "in the VM through its guest agent (guest-exec over $G/qga.sock)"

step "Boot the test guest (QEMU, TCG, no NIC)"
printf '$ build/guest/boot-guest.sh %s\n' "$G"
"$top/build/guest/boot-guest.sh" "$G" 2>&1 || die "the guest did not boot"
qemu_alive || die "QEMU is not running"
qpid=$(qemu_pid)
ok "QEMU pid $qpid, QMP on $G/qmp.sock, guest agent on $G/qga.sock"
gsh $GIP -br link
[[ $(guest $GIP -o link | grep -vc ': lo:') == 0 ]] || die "the guest already has a NIC"
ok "the guest has only lo"

step "Attach it: the hook in TAP mode (status creating, pid = QEMU's)"
hook creating "$qpid" || die "the hook failed"
vip=$(jq -r '.ip // empty' "$work/hook.out")
vip=${vip%/*}
[[ -n $vip ]] || die "the hook's result has no address"
show ocinet list
[[ $(listed "$VM") == "$vip/"* ]] || die "ocinet list does not show $VM with $vip"
ok "the VM got $vip"

step "The host side: bridge ocinet0 with the TAP on it, the published port"
show ip -br addr show ocinet0
show ip -br link show master ocinet0
tap=$(jq -r '.hostVeth // empty' "$work/hook.out")
ip -o link show master ocinet0 | grep -q ": $tap:" || die "the TAP '$tap' is not on ocinet0"
printf '$ ip -d link show %s | grep -o "tun type tap.*"\n' "$tap"
ip -d link show "$tap" | grep -o 'tun type tap.*' || die "$tap is not a TAP"
echo "the rules the hook added:"
ocinet_rules

step "The guest side: eth0 (hot-plugged, configured through the agent)"
# The hook returns once eth0 is configured; its carrier may come up a moment later.
for i in $(seq 50); do guest $GIP -o link show eth0 | grep -q NO-CARRIER || break; sleep 0.1; done
gsh $GIP addr show eth0
guest $GIP -o -4 addr show eth0 | grep -q " $vip/16 " || die "guest eth0 has no $vip/16"
gsh $GIP route
guest $GIP route | grep -q '^default via 10.213.0.1 dev eth0' || die "no default route via 10.213.0.1 in the guest"
ok "eth0 has $vip/16, default route via the bridge (10.213.0.1)"

step "Host <-> guest"
show busybox ping -c 1 -W 3 "$vip"
gsh $BB ping -c 1 -W 3 10.213.0.1
ok "the host reaches the guest and the guest reaches its gateway"

step "A web server in the guest, fetched through the published port (DNAT into the VM)"
gsh $BB sh -c 'mkdir -p /www && echo hello from the guest > /www/index.html'
gsh $BB httpd -p 80 -h /www
fetch "http://127.0.0.1:8080/" "hello from the guest"
fetch "http://$vip/" "hello from the guest"
ok "127.0.0.1:8080 reached $vip:80 in the VM"

step "Detach it: the hook again, status stopped (what poststop sends)"
hook stopped || die "the teardown failed"
gsh $GIP -br link
[[ $(guest $GIP -o link | grep -vc ': lo:') == 0 ]] || die "the NIC is still in the guest"
ok "eth0 was unplugged from the guest"

step "Nothing is left on the host"
nothing_left
ok "no bridge or TAP, no OCINET rules, no leases"
hook_log "hook log:"

step "Stop QEMU"
printf '$ kill %s\n' "$qpid"
stop_qemu
qemu_alive && die "QEMU is still running"
ok "QEMU exited"

demo_passed
