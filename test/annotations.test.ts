// Annotations and bundle files are the container user's: what they write
// cannot take a host device, reach another VM's sockets, take a host port
// below the admin's range, name or multiply host links, make teardown rename
// a link it does not own, or make the root hook read a file it should not.
import t from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { execFileSync } from 'node:child_process';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { cleanup, cli, hook, inNs, sandbox, sh, snapshot, state, tempDir } from './lib/env.js';

const SUBNET = ['--subnet', '10.241.0.0/24'];
const iface = (device: string, name: string, mac = '02:42:20:6f:a3:69'): string => JSON.stringify([{ device, name, hwAddr: mac, mtu: 1500 }]);
/** One line on stderr, naming the program. */
const oneLine = (stderr: string): boolean => stderr.trim().split('\n').length === 1 && stderr.startsWith('ocinet-hook: ');

/** A unix socket that counts who connects (a decoy QEMU). */
async function decoy(path: string): Promise<{ server: Server; connections: () => number }> {
  let n = 0;
  const server = createServer((s) => {
    n++;
    s.destroy();
  });
  await new Promise<void>((r) => server.listen(path, () => r()));
  return { server, connections: () => n };
}

t.test('a host device named in io.ocinet.interfaces stays on the host unless the hook entry allows it', async (t) => {
  const dir = tempDir('hostdev');
  const peer = await sandbox();
  await sh('ip', ['link', 'add', 'uplink0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', String(peer.pid)]);
  await sh('ip', ['addr', 'add', '198.51.100.7/24', 'dev', 'uplink0']);
  await sh('ip', ['link', 'set', 'uplink0', 'up']);
  const mac = (await sh('cat', ['/sys/class/net/uplink0/address'], { reject: false })).stdout;
  const before = await snapshot(dir);
  const sb = await sandbox();
  const ann = { 'io.ocinet.interfaces': iface('uplink0', 'stolen') };
  const r = await hook(['--state-dir', dir, ...SUBNET], state('thief', 'creating', sb.pid, { annotations: ann }));
  t.equal(r.exitCode, 1, 'refused');
  t.match(r.stderr, /device 'uplink0' is a host device; an annotation may only take one the hook entry allows \(--allow-host-device\)/);
  t.ok(oneLine(r.stderr), 'host device: one line');
  t.match((await sh('ip', ['-4', '-o', 'addr', 'show', 'uplink0'])).stdout, /198\.51\.100\.7\/24/, 'uplink0 is still on the host with its address');
  t.equal(await snapshot(dir), before, 'nothing changed');
  // The admin allows it: the device moves in and comes back out at teardown.
  const ok = await hook(['--state-dir', dir, ...SUBNET, '--allow-host-device', 'uplink*'], state('allowed', 'creating', sb.pid, { annotations: ann }));
  t.equal(ok.exitCode, 0, ok.stderr);
  t.match((await inNs(sb.pid, ['ip', '-o', 'link', 'show', 'stolen'])).stdout, /stolen/, 'moved in as allowed');
  t.equal((await hook(['--state-dir', dir, ...SUBNET], state('allowed', 'stopped'))).exitCode, 0);
  t.match((await sh('ip', ['-o', 'link', 'show', 'uplink0'])).stdout, /uplink0/, 'back on the host under its own name');
  if (mac) t.match((await sh('ip', ['-o', 'link', 'show', 'uplink0'])).stdout, new RegExp(mac.trim()), 'with its own MAC');
  await sh('ip', ['link', 'del', 'uplink0']);
  await Promise.all([sb.kill(), peer.kill()]);
  cleanup(dir);
});

t.test('host links an annotation creates: the admin\'s prefix, reserved names refused, counts and sizes bounded', async (t) => {
  const dir = tempDir('names');
  const sb = await sandbox();
  const before = await snapshot(dir);
  const many = JSON.stringify([...Array(20)].map((_, i) => ({ device: `ocx${i}`, name: `n${i}`, hwAddr: '02:00:00:00:01:01', mtu: 1500 })));
  const routes = JSON.stringify([...Array(65)].map((_, i) => ({ dest: `10.9.${i}.0/24`, gateway: '10.241.0.1', device: 'eth0' })));
  const cases: [string, Record<string, string>, RegExp][] = [
    ['docker0', { 'io.ocinet.interfaces': iface('docker0', 'n1') }, /device 'docker0' must start with 'ocx'/],
    ['ocinet1', { 'io.ocinet.interfaces': iface('ocinet1', 'n1') }, /device 'ocinet1' must start with 'ocx'/],
    ['a TAP name of ocinet\'s', { 'io.ocinet.interfaces': iface('oct0123456789', 'n1') }, /must start with 'ocx'|belongs to the host or to ocinet/],
    ['20 interfaces', { 'io.ocinet.interfaces': many }, /20 interfaces, more than 8/],
    ['65 routes', { 'io.ocinet.routes': routes }, /65 routes, more than 64/],
    ['a huge annotation', { 'io.ocinet.routes': 'x'.repeat(20000) }, /annotation io\.ocinet\.routes is 20000 bytes, more than the 16384 allowed/],
  ];
  for (const [what, annotations, re] of cases) {
    const r = await hook(['--state-dir', dir, ...SUBNET], state('n', 'creating', sb.pid, { annotations }));
    t.equal(r.exitCode, 1, `${what}: refused`);
    t.match(r.stderr, re, `${what}: says why`);
    t.ok(oneLine(r.stderr), `${what}: one line`);
  }
  t.equal(await snapshot(dir), before, 'no host link made');
  const ok = await hook(['--state-dir', dir, ...SUBNET], state('n', 'creating', sb.pid, { annotations: { 'io.ocinet.interfaces': iface('ocxone', 'n1') } }));
  t.equal(ok.exitCode, 0, ok.stderr);
  t.match((await sh('ip', ['-o', 'link', 'show', 'ocxone'])).stdout, /ocxone/, 'a prefixed name is made');
  t.equal((await hook(['--state-dir', dir, ...SUBNET], state('n', 'stopped'))).exitCode, 0);
  t.equal(await snapshot(dir), before);
  await sb.kill();
  cleanup(dir);
});

t.test('host ports from annotations stay in the admin\'s range; the hook entry\'s --publish is not limited', async (t) => {
  const dir = tempDir('ports');
  const sb = await sandbox();
  const before = await snapshot(dir);
  const r = await hook(['--state-dir', dir, ...SUBNET], state('p', 'creating', sb.pid, { annotations: { 'io.ocinet.publish': '22:2222' } }));
  t.equal(r.exitCode, 1);
  t.match(r.stderr, /annotation io\.ocinet\.publish: host port 22 is outside the range the hook entry allows \(1024-65535; --publish-range\)/);
  t.ok(oneLine(r.stderr), 'port 22: one line');
  t.notMatch((await sh('iptables-save', ['-t', 'nat'])).stdout, /--dport 22 /, 'no DNAT for port 22');
  t.equal(await snapshot(dir), before);
  const narrow = await hook(['--state-dir', dir, ...SUBNET, '--publish-range', '30000-30010'], state('p', 'creating', sb.pid, { annotations: { 'io.ocinet.publish': '8080:80' } }));
  t.match(narrow.stderr, /host port 8080 is outside the range the hook entry allows \(30000-30010/);
  const admin = await hook(['--state-dir', dir, ...SUBNET, '--publish', '80:80'], state('p', 'creating', sb.pid));
  t.equal(admin.exitCode, 0, admin.stderr);
  const published = (await sh('iptables-save', ['-t', 'nat'])).stdout + (await sh('nft', ['list', 'ruleset'])).stdout;
  t.match(published, /--dport 80 .*DNAT --to-destination 10\.241\.0\.\d+:80|tcp \. 80 : 10\.241\.0\.\d+ \. 80/, "the admin's port 80 is published");
  t.equal((await hook(['--state-dir', dir, ...SUBNET], state('p', 'stopped'))).exitCode, 0);
  t.equal(await snapshot(dir), before);
  await sb.kill();
  cleanup(dir);
});

t.test('QEMU sockets from annotations: only the allowed directories, no symlinks, checked before any connect', async (t) => {
  const dir = tempDir('sockets');
  // /run of this test's own mount namespace: the default VM directories live there.
  execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', '/run']);
  const outside = tempDir('decoy');
  const d = await decoy(join(outside, 'qmp.sock'));
  const allowed = join(outside, 'allowed');
  mkdirSync(allowed);
  symlinkSync(join(outside, 'qmp.sock'), join(allowed, 'qmp.sock'));
  const tap = (qmp: string, qga = qmp): Record<string, string> => ({ 'io.ocinet.mode': 'tap', 'io.ocinet.qmp': qmp, 'io.ocinet.qga': qga });
  const args = ['--state-dir', dir, ...SUBNET, '--allow-vm-sockets', allowed];
  const before = await snapshot(dir);
  const cases: [string, string, Record<string, string>, RegExp][] = [
    ['a socket elsewhere', 'vm1', tap(join(outside, 'qmp.sock')), /is not in a directory the hook entry allows/],
    ['a symlink in an allowed directory', 'vm1', tap(join(allowed, 'qmp.sock')), /has a symlink/],
    ['.. out of an allowed directory', 'vm1', tap(`${allowed}/../qmp.sock`), /must be an absolute, normalized path/],
    ["another container's default directory", 'vm1', tap('/run/ocinet/vm/vm2/qmp.sock'), /is not in a directory the hook entry allows/],
  ];
  for (const [what, id, annotations, re] of cases) {
    const r = await hook(args, state(id, 'creating', 1, { annotations }));
    t.equal(r.exitCode, 1, `${what}: refused`);
    t.match(r.stderr, re, `${what}: says why`);
    t.ok(oneLine(r.stderr), `${what}: one line`);
  }
  t.equal(d.connections(), 0, 'the decoy saw no connection');
  t.equal(await snapshot(dir), before, 'nothing changed');
  // The container's own default directory is allowed: the hook does connect there.
  mkdirSync('/run/ocinet/vm/vm2', { recursive: true });
  const own = await decoy('/run/ocinet/vm/vm2/qmp.sock');
  const ga = await decoy('/run/ocinet/vm/vm2/qga.sock');
  const r = await hook(args, state('vm2', 'creating', 1, { annotations: tap('/run/ocinet/vm/vm2/qmp.sock', '/run/ocinet/vm/vm2/qga.sock') }));
  t.not(r.exitCode, 0, 'the stand-in is no QEMU, so the setup fails afterwards');
  t.ok(own.connections() + ga.connections() > 0, "but the container's own socket was reached");
  t.equal(await snapshot(dir), before, 'and the failure left nothing');
  for (const s of [d, own, ga]) s.server.close();
  execFileSync('umount', ['/run']);
  cleanup(outside);
  cleanup(dir);
});

t.test('teardown never renames a host link that only has the recorded name', async (t) => {
  const dir = tempDir('rename');
  const keep = await sandbox();
  t.equal((await hook(['--state-dir', dir, ...SUBNET], state('keep', 'creating', keep.pid))).exitCode, 0, 'ocinet0 is the bridge');
  // root moves a host veth into a sandbox under the bridge's name (the CLI keeps kata's semantics).
  await sh('ip', ['link', 'add', 'hv0', 'type', 'veth', 'peer', 'name', 'hvpeer']);
  const victim = await sandbox();
  const add = await cli(['network', 'add-iface', '--state-dir', dir, '--pid', String(victim.pid), '-'], JSON.stringify({ device: 'hv0', name: 'ocinet0', hwAddr: '02:42:20:6f:a3:69', mtu: 1500 }));
  t.equal(add.exitCode, 0, add.stderr);
  await victim.kill(); // the veth dies with the namespace; the host's ocinet0 is the bridge
  const g = await cli(['gc', '--state-dir', dir]);
  t.equal(g.exitCode, 0, g.stderr);
  t.match((await sh('ip', ['-d', '-o', 'link', 'show', 'ocinet0'])).stdout, /bridge/, 'the bridge keeps its name');
  t.notMatch((await sh('ip', ['-o', 'link'])).stdout, /hv0:/, 'and nothing was renamed to hv0');
  t.equal((await inNs(keep.pid, ['busybox', 'ping', '-c1', '-W2', '10.241.0.1'], false)).exitCode, 0, 'the other container keeps its gateway');
  t.equal((await hook(['--state-dir', dir, ...SUBNET], state('keep', 'stopped'))).exitCode, 0);
  await keep.kill();
  cleanup(dir);
});

t.test("the bundle's config.json: only a regular file, bounded, never echoed", async (t) => {
  const dir = tempDir('bundle');
  const sb = await sandbox();
  const before = await snapshot(dir);
  const bundle = (name: string, make: (file: string) => void): string => {
    const b = join(dir, name);
    mkdirSync(b);
    make(join(b, 'config.json'));
    return b;
  };
  const cases: [string, string, RegExp][] = [
    ['a symlink to /dev/zero', bundle('zero', (f) => symlinkSync('/dev/zero', f)), /config\.json is a symlink/],
    ['a FIFO', bundle('fifo', (f) => execFileSync('mkfifo', [f])), /config\.json is not a regular file/],
    ['a symlink to a root-only file', bundle('shadow', (f) => symlinkSync('/etc/shadow', f)), /config\.json is a symlink/],
    ['a file that is not JSON', bundle('text', (f) => writeFileSync(f, 'root:*:202:0:99999:7:::\n')), /config\.json is not valid JSON$/],
    ['a file over the cap', bundle('big', (f) => writeFileSync(f, ' '.repeat(5 << 20))), /more than the 4194304 the hook reads/],
  ];
  for (const [what, b, re] of cases) {
    // No annotations in the state: the hook reads the bundle's.
    const r = await hook(['--state-dir', dir, ...SUBNET], JSON.stringify({ ociVersion: '1.0.2', id: 'b', status: 'creating', pid: sb.pid, bundle: b }));
    t.equal(r.exitCode, 1, `${what}: refused`);
    t.match(r.stderr.trim(), re, `${what}: says why`);
    t.notMatch(r.stderr, /root:\*/, `${what}: no content echoed`);
    t.ok(oneLine(r.stderr), `${what}: one line`);
  }
  t.equal(await snapshot(dir), before);
  await sb.kill();
  cleanup(dir);
});

t.test('the state on stdin is bounded', async (t) => {
  const dir = tempDir('stdin');
  const huge = JSON.stringify({ ociVersion: '1.0.2', id: 'x', status: 'creating', pid: 1, bundle: '/', annotations: { pad: 'x'.repeat(9 << 20) } });
  const r = await hook(['--state-dir', dir], huge);
  t.equal(r.exitCode, 1);
  t.match(r.stderr, /^ocinet-hook: state on stdin is larger than 8388608 bytes$/m);
  t.ok(oneLine(r.stderr), 'one line');
  cleanup(dir);
});

t.test("a guest that never answers holds up only its own sandbox, not other containers' setups", async (t) => {
  const dir = tempDir('slowguest');
  const socks = tempDir('slowsocks');
  // A QEMU guest agent that accepts and never answers (and a QMP socket beside it).
  const silent: Server[] = [];
  for (const name of ['qmp.sock', 'qga.sock']) {
    const s = createServer(() => undefined);
    await new Promise<void>((r) => s.listen(join(socks, name), () => r()));
    silent.push(s);
  }
  const { spawn } = await import('node:child_process');
  const { CLI } = await import('./lib/env.js');
  const stuck = spawn(CLI, ['ipvs', 'ipvsadm', '--parameters', '--add-service --tcp-service 10.10.11.12:100 --scheduler rr', '--state-dir', dir, '--qmp', join(socks, 'qmp.sock'), '--qga', join(socks, 'qga.sock')], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 1500)); // it holds its sandbox's lock, waiting for the guest
  t.equal(stuck.exitCode, null, 'the IPVS call is still waiting for the guest');
  const sb = await sandbox();
  const r = await hook(['--state-dir', dir, ...SUBNET], state('other', 'creating', sb.pid));
  t.equal(r.exitCode, 0, `another container's setup goes on: ${r.stderr}`);
  t.equal((await hook(['--state-dir', dir, ...SUBNET], state('other', 'stopped'))).exitCode, 0);
  stuck.kill('SIGKILL');
  for (const s of silent) s.close();
  await sb.kill();
  cleanup(socks);
  cleanup(dir);
});

t.test('ocinet doctor reports the annotation policy', async (t) => {
  const dir = tempDir('doctorpolicy');
  const r = await cli(['doctor', '--state-dir', join(dir, 'state')]);
  t.match(r.stdout, /annotation policy \(defaults; a hook entry widens them with --allow-host-device.*\): host devices moved in: none; host devices created: ocx\*; QEMU sockets: \/run\/vc\/vm\/<id>\/, \/run\/ocinet\/vm\/<id>\/; host ports: 1024-65535/);
  cleanup(dir);
});
