#!/usr/bin/env bash
# Boot the test guest in the background and wait until its agent answers.
#   boot-guest.sh DIR
# DIR gets qmp.sock, qga.sock, qemu.pid and console.log. Stop it with
#   kill "$(cat DIR/qemu.pid)"
# Env: OCINET_GUEST_DIR (images, default .cache/guest), OCINET_BOOT_TIMEOUT (s, 60),
# OCINET_GUEST_AGENT_PORT: serial (default: a virtio-serial port named
# org.qemu.guest_agent.0, as libvirt gives the agent) or console (a virtconsole:
# the guest sees its host end always open, so an idle qemu-ga blocks in poll
# instead of reading the port every 100 ms; for the bench's comparison).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMG=${OCINET_GUEST_DIR:-$HERE/../../.cache/guest}
DIR=${1:?usage: boot-guest.sh DIR}
TIMEOUT=${OCINET_BOOT_TIMEOUT:-60}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
[[ -f $IMG/vmlinuz && -f $IMG/initramfs.cpio.gz ]] || { echo "boot-guest: no guest in $IMG (run build-guest.sh)" >&2; exit 1; }
rm -f "$DIR/qmp.sock" "$DIR/qga.sock" "$DIR/qemu.pid" "$DIR/console.log"
case ${OCINET_GUEST_AGENT_PORT:-serial} in
  serial) port=virtserialport ;;
  console) port=virtconsole ;;
  *) echo "boot-guest: OCINET_GUEST_AGENT_PORT is serial or console" >&2; exit 1 ;;
esac

# TCG only: KVM fails for real kernels on these machines ("failed to set MSR").
# Machine pc (i440fx): its root bus takes PCI hot-plug, q35's pcie.0 does not.
# panic=-1 + -no-reboot: a guest panic ends QEMU instead of hanging.
qemu-system-x86_64 -machine pc -accel tcg -cpu max -m 512 -smp 1 \
  -display none -monitor none -no-reboot -daemonize \
  -kernel "$IMG/vmlinuz" -initrd "$IMG/initramfs.cpio.gz" \
  -append 'console=ttyS0 quiet panic=-1' \
  -qmp "unix:$DIR/qmp.sock,server=on,wait=off" \
  -chardev "socket,path=$DIR/qga.sock,server=on,wait=off,id=qga0" \
  -device virtio-serial -device "$port,chardev=qga0,name=org.qemu.guest_agent.0" \
  -nic none -pidfile "$DIR/qemu.pid" -serial "file:$DIR/console.log"

# Wait for the agent: guest-sync with a fresh id each second (early requests
# sit in the socket until the guest opens its port), then guest-ping.
if ! node --input-type=module - "$DIR/qga.sock" "$TIMEOUT" <<'EOF'; then
import net from 'node:net';
const [sock, secs] = process.argv.slice(2);
const deadline = Date.now() + Number(secs) * 1000;
const ids = new Set();
let buf = '', synced = false;
const c = net.connect(sock);
const fail = (m) => { console.error(`boot-guest: ${m}`); process.exit(1); };
c.on('error', (e) => fail(`agent socket: ${e.message}`));
c.on('close', () => fail('agent socket closed (QEMU exited?)'));
c.on('data', (d) => {
  buf += d.toString('latin1');
  let i;
  while ((i = buf.indexOf('\n')) >= 0) {
    const line = buf.slice(0, i).replace(/^[^{]*/, '');
    buf = buf.slice(i + 1);
    let msg;
    try { msg = JSON.parse(line); } catch { continue; }
    if (!synced && ids.has(msg.return)) {
      synced = true;
      c.write('{"execute":"guest-ping"}\n');
    } else if (synced && msg.return && typeof msg.return === 'object') {
      c.removeAllListeners('close');
      c.destroy();
      process.exit(0);
    }
  }
});
const tick = () => {
  if (Date.now() > deadline) fail(`guest agent did not answer within ${secs} s`);
  if (!synced) {
    const id = Math.floor(Math.random() * 2 ** 31);
    ids.add(id);
    c.write(`\xff{"execute":"guest-sync","arguments":{"id":${id}}}\n`, 'latin1');
  }
  setTimeout(tick, 1000);
};
c.on('connect', tick);
EOF
  echo "boot-guest: console tail:" >&2
  tail -n 20 "$DIR/console.log" >&2 || true
  kill "$(cat "$DIR/qemu.pid" 2>/dev/null)" 2>/dev/null || true
  exit 1
fi
echo "boot-guest: guest up (pid $(cat "$DIR/qemu.pid"))" >&2
