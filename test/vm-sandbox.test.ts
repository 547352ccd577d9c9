// VM sandboxes end to end through the real entry points: `ocinet network`
// with --qmp/--qga against a booted guest, and ocinet-hook in TAP mode
// (annotations io.ocinet.mode/qmp/qga) giving the guest a working network,
// published port included, and taking it away again.
import t from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { existsSync, readFileSync } from 'node:fs';
import { guestLinks, guestRoutes } from '../core/vm/hotplug.js';
import { bootGuest } from './lib/guest.js';
import { cli, hook, sh, snapshot, state, tempDir } from './lib/env.js';

const DIR = tempDir('vmsb');
const guest = bootGuest(DIR, t, join(DIR, 'state'));
const G = guest.sockets;
const qemuPid = guest.qemuPid;
const stateDir = join(DIR, 'state');
const VM = ['--qmp', G.qmp, '--qga', G.qga, '--state-dir', stateDir];
// The guest's sockets live in the test's temp dir: the hook entry allows annotations to name them there.
// iptables: the TAP's guard is checked in ebtables' listing (the nftables guard is the same set entries as a veth's).
const HOOK_ARGS = ['--state-dir', stateDir, '--subnet', '10.213.0.0/24', '--allow-vm-sockets', join(DIR, 'guest'), '--firewall', 'iptables'];

const inGuest = guest.exec;

t.test('the guest boots', async (t) => {
  t.equal(guest.boot.status, 0, guest.boot.stderr);
});

t.test('ocinet network on a VM sandbox (--qmp/--qga)', async (t) => {
  await sh('ip', ['link', 'add', 'ocvm2', 'type', 'bridge']);
  await sh('ip', ['addr', 'add', '172.16.0.1/16', 'dev', 'ocvm2']);
  await sh('ip', ['link', 'set', 'ocvm2', 'up']);
  const before = await snapshot();
  const iface = '{"device":"tap-test","name":"eth-test","IPAddresses":[{"address":"172.16.0.3","mask":"16"}],"hwAddr":"02:42:20:6f:a3:69","mtu":1500}';
  const add = await cli(['network', 'add-iface', ...VM, '--bridge', 'ocvm2', '-'], iface);
  t.equal(add.exitCode, 0, add.stderr);
  const out = JSON.parse(add.stdout) as { pciAddr?: string; linkType?: string };
  t.match(add.stdout, /^\{"device":"tap-test","name":"eth-test","IPAddresses":\[\{"Family":2,"Address":"172\.16\.0\.3","Mask":"16"\}\],"mtu":1500,"hwAddr":"02:42:20:6f:a3:69","pciAddr":"[0-9a-f]{2}(\/[0-9a-f]{2})*"/);
  t.ok(out.pciAddr, `pciAddr ${out.pciAddr}`);
  const nic = (await guestLinks(G)).find((l) => l.ifname === 'eth-test');
  t.equal(nic?.address, '02:42:20:6f:a3:69', 'guest NIC has the MAC');
  t.equal(nic?.mtu, 1500);
  t.equal((await inGuest('/bin/busybox', ['ping', '-c1', '-W3', '172.16.0.1'])).exitcode, 0, 'guest pings the bridge');
  t.equal((await cli(['network', 'list-ifaces', ...VM])).stdout, '[{"name":"eth-test","mac":"02:42:20:6f:a3:69","ip":["172.16.0.3/16"],"mtu":1500}]');
  t.equal((await cli(['network', 'add-route', ...VM, '-'], '{"dest":"177.17.0.0/24","gateway":"172.16.0.9","device":"eth-test"}')).stdout, '[{"dest":"177.17.0.0/24","gateway":"172.16.0.9","device":"eth-test"}]');
  t.ok((await guestRoutes(G)).some((r) => r.dst === '177.17.0.0/24' && r.dev === 'eth-test'), 'route in the guest');
  t.equal((await cli(['network', 'del-route', ...VM, '-'], '{"dest":"177.17.0.0/24"}')).stdout, '[{"dest":"177.17.0.0/24","gateway":"172.16.0.9","device":"eth-test"}]');
  t.notOk((await guestRoutes(G)).some((r) => r.dst === '177.17.0.0/24'), 'route gone from the guest');
  const bad = await cli(['network', 'add-iface', ...VM, '-'], iface.replace('tap-test', 'tap-two'));
  t.equal(bad.stdout, 'null');
  t.match(bad.stderr, /eth-test/, 'a second NIC with the same name is refused');
  const del = await cli(['network', 'del-iface', ...VM, '-'], '{"name":"eth-test"}');
  t.equal(del.stdout, 'null', del.stderr);
  t.notOk((await guestLinks(G)).some((l) => l.ifname === 'eth-test'), 'NIC gone from the guest');
  t.equal(await snapshot(), before, 'TAP gone from the host');
  const half = await cli(['network', 'list-ifaces', '--qmp', G.qmp]);
  t.match(half.stderr, /--qmp and --qga go together/);
  await sh('ip', ['link', 'del', 'ocvm2']);
});

t.test('ocinet network on a VM sandbox: an IPv6 address and route in the guest', async (t) => {
  await sh('ip', ['link', 'add', 'ocvm6', 'type', 'bridge']);
  await sh('ip', ['addr', 'add', 'fd00:78::1/64', 'dev', 'ocvm6', 'nodad']);
  await sh('ip', ['link', 'set', 'ocvm6', 'up']);
  const before = await snapshot();
  const iface = '{"device":"tap-six","name":"eth-six","IPAddresses":[{"address":"fd00:78::3","mask":"64"}],"hwAddr":"02:42:20:6f:a3:6a","mtu":1500}';
  const add = await cli(['network', 'add-iface', ...VM, '--bridge', 'ocvm6', '-'], iface);
  t.equal(add.exitCode, 0, add.stderr);
  t.match(add.stdout, /"IPAddresses":\[\{"Family":10,"Address":"fd00:78::3","Mask":"64"\}\]/, "kata's Family 10");
  t.equal((await cli(['network', 'list-ifaces', ...VM])).stdout, '[{"name":"eth-six","mac":"02:42:20:6f:a3:6a","ip":["fd00:78::3/64"],"mtu":1500}]');
  t.equal((await inGuest('/bin/busybox', ['ping', '-6', '-c1', '-W3', 'fd00:78::1'])).exitcode, 0, 'the guest reaches the bridge over IPv6');
  const route = '{"dest":"2001:db8:78::/48","gateway":"fd00:78::1","device":"eth-six"}';
  t.equal((await cli(['network', 'add-route', ...VM, '-'], route)).stdout, `[${route}]`);
  t.ok((await guestRoutes(G)).some((r) => r.dst === '2001:db8:78::/48' && r.dev === 'eth-six'), 'the v6 route in the guest');
  t.equal((await cli(['network', 'del-iface', ...VM, '-'], '{"name":"eth-six"}')).stdout, 'null');
  t.equal(await snapshot(), before, 'TAP gone from the host');
  await sh('ip', ['link', 'del', 'ocvm6']);
});

t.test('the hook in TAP mode gives the guest a network and takes it away', async (t) => {
  const before = await snapshot(stateDir);
  const ann = { 'io.ocinet.mode': 'tap', 'io.ocinet.qmp': G.qmp, 'io.ocinet.qga': G.qga, 'io.ocinet.publish': '8080:80' };
  const up = await hook(HOOK_ARGS, state('vmbox', 'creating', qemuPid(), { annotations: ann }));
  t.equal(up.exitCode, 0, up.stderr);
  const res = JSON.parse(up.stdout) as { ip: string };
  const eth0 = (await guestLinks(G)).find((l) => l.ifname === 'eth0');
  t.ok(eth0?.addr_info?.some((a) => a.local === res.ip && a.prefixlen === 24), `guest eth0 has ${res.ip}/24`);
  t.ok((await guestRoutes(G)).some((r) => r.dst === 'default' && r.gateway === '10.213.0.1'), 'default route via the gateway');
  t.equal((await inGuest('/bin/busybox', ['ping', '-c1', '-W3', '10.213.0.1'])).exitcode, 0, 'guest pings the gateway');
  // The TAP is a port on the bridge like a veth: its guard passes only the guest's MAC and address.
  const rec = (JSON.parse((await cli(['list', '--json', '--state-dir', stateDir])).stdout) as { hostLink: string; mac: string }[])[0]!;
  t.equal(rec.mac, eth0?.address, "the record holds the guest NIC's MAC");
  const guards = (await sh('ebtables-save', ['-t', 'nat'])).stdout;
  t.match(guards, new RegExp(`-A PREROUTING -i ${rec.hostLink} -j OCINET-SP-`), 'the TAP has a port guard');
  t.match(guards, new RegExp(`-s ! ${rec.mac} -j DROP`));
  t.match(guards, new RegExp(`-p ARP --arp-ip-src ! ${res.ip.replace(/\./g, '\\.')} -j DROP`));
  t.equal(readFileSync(`/proc/sys/net/ipv6/conf/${rec.hostLink}/disable_ipv6`, 'utf8').trim(), '1', 'the TAP takes no IPv6 of its own');
  await inGuest('/bin/busybox', ['ip', 'addr', 'add', '10.213.0.77/32', 'dev', 'eth0']);
  t.not((await inGuest('/bin/busybox', ['ping', '-c1', '-W2', '-I', '10.213.0.77', '10.213.0.1'])).exitcode, 0, 'a guest sending from another address is dropped');
  await inGuest('/bin/busybox', ['ip', 'addr', 'del', '10.213.0.77/32', 'dev', 'eth0']);
  await inGuest('/bin/busybox', ['mkdir', '-p', '/www']);
  await inGuest('/bin/busybox', ['sh', '-c', 'echo hello from the guest > /www/index.html']);
  t.equal((await inGuest('/bin/busybox', ['httpd', '-p', '80', '-h', '/www'])).exitcode, 0, 'web server in the guest');
  const got = await sh('timeout', ['20', 'busybox', 'wget', '-qO-', 'http://127.0.0.1:8080/'], { reject: false });
  t.equal(got.stdout.trim(), 'hello from the guest', 'published port reaches the guest');
  const list = JSON.parse((await cli(['list', '--json', '--state-dir', stateDir])).stdout) as { id: string; alive: boolean }[];
  t.same(list.map((c) => [c.id, c.alive]), [['vmbox', true]]);
  const down = await hook(HOOK_ARGS, state('vmbox', 'stopped'));
  t.equal(down.exitCode, 0, down.stderr);
  t.notOk((await guestLinks(G)).some((l) => l.ifname === 'eth0'), 'NIC unplugged from the guest');
  t.equal(await snapshot(stateDir), before, 'TAP, rules and lease gone');
  t.equal((await hook(HOOK_ARGS, state('vmbox', 'stopped'))).exitCode, 0, 'teardown again is a no-op');
});

t.test('TAP mode failures: clear error, nothing left', async (t) => {
  const before = await snapshot(stateDir);
  const missing = await hook(HOOK_ARGS, state('vmx', 'creating', 1, { annotations: { 'io.ocinet.mode': 'tap' } }));
  t.not(missing.exitCode, 0);
  t.match(missing.stderr, /no QEMU sockets for VM sandbox vmx \(tried \/run\/vc\/vm\/vmx\/qmp\.sock/);
  const gone = await hook(HOOK_ARGS, state('vmy', 'creating', 1, { annotations: { 'io.ocinet.mode': 'tap', 'io.ocinet.qmp': join(DIR, 'none.sock'), 'io.ocinet.qga': G.qga } }));
  t.not(gone.exitCode, 0);
  t.match(gone.stderr, /none\.sock/);
  const badMode = await hook(HOOK_ARGS, state('vmz', 'creating', 1, { annotations: { 'io.ocinet.mode': 'vm' } }));
  t.match(badMode.stderr, /mode 'vm' must be veth or tap/);
  t.equal(await snapshot(stateDir), before);
  // QEMU killed while the sandbox has a network: teardown still cleans the host.
  const ann = { 'io.ocinet.mode': 'tap', 'io.ocinet.qmp': G.qmp, 'io.ocinet.qga': G.qga };
  t.equal((await hook(HOOK_ARGS, state('vmkill', 'creating', 1, { annotations: ann }))).exitCode, 0);
  const listed = async (): Promise<{ pid: number; alive: boolean }> =>
    (JSON.parse((await cli(['list', '--json', '--state-dir', stateDir])).stdout) as { id: string; pid: number; alive: boolean }[]).find((c) => c.id === 'vmkill')!;
  const qemu = qemuPid();
  const row = await listed();
  t.equal(row.pid, qemu, "the record names the QEMU behind the QMP socket, not the state's pid");
  t.equal(row.alive, true);
  execFileSync('kill', ['-9', String(qemu)]);
  await new Promise((r) => setTimeout(r, 300));
  t.ok(existsSync(G.qmp), 'the killed QEMU left its socket file');
  t.equal((await listed()).alive, false, 'yet the record is dead: its QEMU is');
  const down = await hook(HOOK_ARGS, state('vmkill', 'stopped'));
  t.equal(down.exitCode, 0, down.stderr);
  t.equal(await snapshot(stateDir), before, 'nothing left after QEMU died');
});
