// `ocinet network` (kata-network contract) against real runc containers
// started with ocinet's hook: the documented examples with their exact
// outputs, every validation rule, traffic through an added NIC, the hook's
// io.ocinet.interfaces / io.ocinet.routes annotations, and cleanup.
import t from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { cleanup, cli, inNs, sandbox, sh, snapshot, tempDir, type HookRun } from './lib/env.js';
import { Runc } from './lib/runc.js';

const work = tempDir('net');
const stateDir = join(work, 'state');
const rc = new Runc(work, join(work, 'runc'), ['--state-dir', stateDir, '--subnet', '10.213.0.0/24']);
const S = ['--state-dir', stateDir];
const ID = '6ec7a98c0ffee5';
const net = (args: string[], input?: string): Promise<HookRun> => cli(['network', ...args, ...S], input);

// The documented interface (kata's vhostUserSocket is VM-only: tested apart).
const IFACE = { device: 'tap-test', name: 'eth-test', IPAddresses: [{ address: '172.16.0.3', mask: '16' }], hwAddr: '02:42:20:6f:a3:69', mtu: 1500, queues: 5 };
const IFACE_OUT = '{"device":"tap-test","name":"eth-test","IPAddresses":[{"Family":2,"Address":"172.16.0.3","Mask":"16"}],"mtu":1500,"hwAddr":"02:42:20:6f:a3:69"}';

// A second bridge with a test host on it, for traffic through the added NIC.
const testHost = await sandbox();
await sh('ip', ['link', 'add', 'ocbr2', 'type', 'bridge']);
await sh('ip', ['link', 'set', 'ocbr2', 'up']);
await sh('ip', ['link', 'add', 'th0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', String(testHost.pid)]);
await sh('ip', ['link', 'set', 'th0', 'master', 'ocbr2', 'up']);
await inNs(testHost.pid, ['ip', 'addr', 'add', '172.16.0.9/16', 'dev', 'eth0']);
await inNs(testHost.pid, ['ip', 'link', 'set', 'eth0', 'up']);
const baseline = await snapshot();

t.teardown(async () => {
  await testHost.kill();
  cleanup(work);
});

const sandboxView = async (id: string): Promise<string> =>
  (await rc.exec(id, ['ip', '-o', 'link'])).stdout.replace(/\d+: /g, '') + (await rc.exec(id, ['ip', '-4', '-o', 'addr'])).stdout + (await rc.exec(id, ['ip', 'route'])).stdout;

t.test('documented examples, exact outputs, truncated id', async (t) => {
  t.equal((await rc.start(ID, await rc.bundle('kata'))).exitCode, 0);
  const add = await net(['add-iface', '6ec7a98', '-', '--bridge', 'ocbr2'], JSON.stringify(IFACE));
  t.equal(add.stderr, '');
  t.equal(add.stdout, IFACE_OUT, 'add-iface prints the interface in kata form');
  t.equal(add.exitCode, 0);
  const list = await net(['list-ifaces', '6ec7a98']);
  t.equal(list.stdout, '[{"name":"eth-test","mac":"02:42:20:6f:a3:69","ip":["172.16.0.3/16"],"mtu":1500}]');
  t.match((await rc.exec(ID, ['ip', 'route'])).stdout, /172\.16\.0\.0\/16 dev eth-test scope link\s+src 172\.16\.0\.3/, 'the subnet route came with the address');
  t.equal((await rc.exec(ID, ['ping', '-c1', '-W2', '172.16.0.9'])).exitCode, 0, 'traffic: reaches the test host through the new NIC');

  // kata's example adds a default route via the new NIC: the hook's default must go first.
  const delDefault = await net(['del-route', '6ec7a98', '-'], '{"dest":"default"}');
  t.equal(delDefault.stdout, '[{"dest":"default","gateway":"10.213.0.1","device":"eth0"}]');
  const addDefault = await net(['add-route', '6ec7a98', '-'], '{"dest":"default","gateway":"172.16.0.1","device":"eth-test"}');
  t.equal(addDefault.stdout, '[{"dest":"default","gateway":"172.16.0.1","device":"eth-test"}]');
  const addMore = await net(['add-route', '6ec7a98', '-'], '[{"dest":"177.17.0.0/24","gateway":"172.16.0.9","device":"eth-test"},{"dest":"10.9.9.9","device":"lo"}]');
  t.equal(addMore.stdout, '[{"dest":"177.17.0.0/24","gateway":"172.16.0.9","device":"eth-test"},{"dest":"10.9.9.9","device":"lo"}]');
  const routes = (await rc.exec(ID, ['ip', 'route'])).stdout;
  t.match(routes, /default via 172\.16\.0\.1 dev eth-test/);
  t.match(routes, /177\.17\.0\.0\/24 via 172\.16\.0\.9 dev eth-test/);
  t.match(routes, /10\.9\.9\.9 dev lo/);
  t.equal((await net(['del-route', '6ec7a98', '-'], '{"dest":"10.9.9.9"}')).stdout, '[{"dest":"10.9.9.9","device":"lo"}]', 'bare IP means /32');
  t.equal((await net(['del-route', '6ec7a98', '-'], '{"dest":"177.17.0.0/24","device":"eth-test"}')).stdout, '[{"dest":"177.17.0.0/24","gateway":"172.16.0.9","device":"eth-test"}]');
  t.equal((await net(['del-route', '6ec7a98', '-'], '{"dest":"default","gateway":"172.16.0.1"}')).stdout, '[{"dest":"default","gateway":"172.16.0.1","device":"eth-test"}]');
  t.equal((await net(['add-route', '6ec7a98', '-'], '{"dest":"default","gateway":"10.213.0.1","device":"eth0"}')).exitCode, 0, 'hook default restored');

  const del = await net(['del-iface', '6ec7a98', '-'], JSON.stringify(IFACE));
  t.equal(del.stdout, 'null', 'del-iface prints null on success');
  t.equal(del.exitCode, 0);
  t.notMatch((await rc.exec(ID, ['ip', '-o', 'link'])).stdout, /eth-test/, 'gone from the container');
  t.notOk(existsSync('/proc/net/dev') && (await sh('ip', ['-o', 'link'])).stdout.includes('tap-test'), 'host end gone');
  t.equal((await net(['list-ifaces', '6ec7a98'])).stdout, 'null', 'list-ifaces: null when none');
  const again = await net(['del-iface', '6ec7a98', '-'], '{"name":"eth-test"}');
  t.equal(again.exitCode, 1);
  t.equal(again.stdout, '{"name":"eth-test"}', 'del-iface failure prints the interface');
  t.match(again.stderr, /no interface 'eth-test' was added/);
});

t.test('every validation rule: null, one line, exit 1, no change', async (t) => {
  await rc.start('6ec7a99bad', await rc.bundle('kata-b'));
  const before = (await sandboxView(ID)) + (await snapshot(stateDir));
  const base = { ...IFACE, device: 'tap-two', name: 'eth-two' };
  t.equal((await net(['add-iface', ID, '-'], JSON.stringify({ ...IFACE, device: 'tap-one' }))).exitCode, 0, 'eth-test present for duplicate checks');
  const mid = (await sandboxView(ID)) + (await snapshot(stateDir));
  const cases: [string, string[], string, RegExp][] = [
    ['too-long name', ['add-iface', ID, '-'], JSON.stringify({ ...base, name: 'a234567890123456' }), /field 'name': must be 1-15 characters/],
    ['name starts with digit', ['add-iface', ID, '-'], JSON.stringify({ ...base, name: '1eth' }), /field 'name': must be 1-15 characters/],
    ['device with bad char', ['add-iface', ID, '-'], JSON.stringify({ ...base, device: 'tap/x' }), /field 'device'/],
    ['mtu 45', ['add-iface', ID, '-'], JSON.stringify({ ...base, mtu: 45 }), /field 'mtu': must be >= 46/],
    ['mtu 9601', ['add-iface', ID, '-'], JSON.stringify({ ...base, mtu: 9601 }), /field 'mtu': must be <= 9600/],
    ['two addresses', ['add-iface', ID, '-'], JSON.stringify({ ...base, IPAddresses: [{ address: '172.16.0.4', mask: '16' }, { address: '172.16.0.5', mask: '16' }] }), /field 'IPAddresses': one address per family/],
    ['three addresses', ['add-iface', ID, '-'], JSON.stringify({ ...base, IPAddresses: [{ address: '172.16.0.4', mask: '16' }, { address: 'fd00::4', mask: 64 }, { address: 'fd00::5', mask: 64 }] }), /field 'IPAddresses': must NOT have more than 2 items/],
    ['bad address', ['add-iface', ID, '-'], JSON.stringify({ ...base, IPAddresses: [{ address: '172.16.0.400', mask: '16' }] }), /'172\.16\.0\.400' is not an IPv4 or IPv6 address/],
    ['bad mask', ['add-iface', ID, '-'], JSON.stringify({ ...base, IPAddresses: [{ address: '172.16.0.4', mask: '33' }] }), /mask '33' of 172\.16\.0\.4 must be 0-32/],
    ['bad MAC', ['add-iface', ID, '-'], JSON.stringify({ ...base, hwAddr: '02:42:20:6f:a3' }), /field 'hwAddr': must be a MAC address/],
    ['multicast MAC', ['add-iface', ID, '-'], JSON.stringify({ ...base, hwAddr: '01:00:5e:00:00:01' }), /multicast address, not a unicast MAC/],
    ['negative queues', ['add-iface', ID, '-'], JSON.stringify({ ...base, queues: -1 }), /field 'queues': must be >= 0/],
    ['unknown field', ['add-iface', ID, '-'], JSON.stringify({ ...base, colour: 'red' }), /unknown field 'colour'/],
    ['vhost-user on a container', ['add-iface', ID, '-'], JSON.stringify({ ...base, vhostUserSocket: '/run/vhu.sock' }), /only VM sandboxes take vhost-user NICs/],
    ['duplicate name', ['add-iface', ID, '-'], JSON.stringify({ ...base, name: 'eth-test' }), /interface 'eth-test' already exists in the sandbox/],
    ['duplicate name (eth0)', ['add-iface', ID, '-'], JSON.stringify({ ...base, name: 'eth0' }), /interface 'eth0' already exists/],
    ['device used by a sandbox', ['add-iface', '6ec7a99bad', '-'], JSON.stringify({ ...base, device: 'tap-one' }), /device 'tap-one' is already used by sandbox 6ec7a98c0ffee5/],
    ['ocinet bridge as device', ['add-iface', ID, '-'], JSON.stringify({ ...base, device: 'ocinet0' }), /belongs to the host or to ocinet/],
    ['missing hwAddr', ['add-iface', ID, '-'], JSON.stringify({ device: 'x', name: 'y', mtu: 1500 }), /missing required field 'hwAddr'/],
    ['missing mtu', ['add-iface', ID, '-'], JSON.stringify({ device: 'x', name: 'y', hwAddr: '02:00:00:00:00:01' }), /missing required field 'mtu'/],
    ['malformed JSON', ['add-iface', ID, '-'], '{"device": "x",', /input on stdin is not valid JSON/],
    ['missing file', ['add-iface', ID, '/nonexistent.json'], '', /cannot read \/nonexistent\.json/],
    ['unknown container', ['add-iface', 'zzz', '-'], JSON.stringify(base), /no container 'zzz' in ocinet's state or runc's/],
    ['ambiguous prefix', ['add-iface', '6ec7a9', '-'], JSON.stringify(base), /container id '6ec7a9' is ambiguous/],
    ['list: unknown container', ['list-ifaces', 'zzz'], '', /no container 'zzz'/],
    ['route: default without gateway', ['add-route', ID, '-'], '{"dest":"default","device":"eth-test"}', /dest 'default' needs a gateway/],
    ['route: missing device', ['add-route', ID, '-'], '{"dest":"10.1.0.0/16"}', /missing required field 'device'/],
    ['route: missing dest', ['add-route', ID, '-'], '{"device":"eth-test"}', /missing required field 'dest'/],
    ['route: host bits', ['add-route', ID, '-'], '{"dest":"10.1.0.1/16","device":"eth-test"}', /has host bits set/],
    ['route: bad gateway', ['add-route', ID, '-'], '{"dest":"10.1.0.0/16","gateway":"x","device":"eth-test"}', /field 'gateway': 'x' is not an IPv4 or IPv6 address/],
    ['route: unknown device', ['add-route', ID, '-'], '{"dest":"10.1.0.0/16","device":"nope0"}', /device 'nope0' is not in the sandbox/],
    ['route: device too long', ['add-route', ID, '-'], '{"dest":"10.1.0.0/16","device":"a234567890123456"}', /field 'device': must be 1-15/],
    ['route: existing default', ['add-route', ID, '-'], '{"dest":"default","gateway":"172.16.0.1","device":"eth-test"}', /a route to default already exists \(default via 10\.213\.0\.1 dev eth0\)/],
    ['route: second of two fails', ['add-route', ID, '-'], '[{"dest":"10.2.0.0/16","device":"eth-test"},{"dest":"10.3.0.0/16","gateway":"10.99.99.99","device":"eth-test"}]', /Nexthop has invalid gateway|Network is unreachable/],
    ['del-route: no match', ['del-route', ID, '-'], '{"dest":"10.4.0.0/16"}', /no route matches/],
    ['del-route: empty array', ['del-route', ID, '-'], '[]', /empty array/],
  ];
  for (const [name, args, input, re] of cases) {
    const r = await net(args, input);
    t.equal(r.exitCode, 1, `${name}: exit 1`);
    t.equal(r.stdout, 'null', `${name}: null on stdout`);
    t.match(r.stderr, re, `${name}: says why`);
    t.equal(r.stderr.trim().split('\n').length, 1, `${name}: one line`);
  }
  t.equal((await sandboxView(ID)) + (await snapshot(stateDir)), mid, 'no bad input changed anything');
  t.equal((await net(['del-iface', ID, '-'], '{"name":"eth-test"}')).stdout, 'null');
  t.equal((await sandboxView(ID)) + (await snapshot(stateDir)), before, 'back to before');
  await rc.stop('6ec7a99bad');
});

t.test('moving an existing host device in and back out', async (t) => {
  await sh('ip', ['link', 'add', 'hostdev0', 'address', '02:00:00:00:aa:01', 'mtu', '1400', 'type', 'veth', 'peer', 'name', 'hostdev0p']);
  const r = await net(['add-iface', ID, '-'], JSON.stringify({ device: 'hostdev0', name: 'eth-moved', hwAddr: '02:00:00:00:bb:02', mtu: 1500, IPAddresses: [{ address: '192.168.77.2', mask: 24 }] }));
  t.equal(r.exitCode, 0, r.stderr);
  t.notMatch((await sh('ip', ['-o', 'link'])).stdout, /hostdev0@/, 'left the host');
  t.match((await rc.exec(ID, ['ip', '-o', 'link', 'show', 'eth-moved'])).stdout, /mtu 1500.*02:00:00:00:bb:02/);
  t.equal((await net(['del-iface', ID, '-'], '{"name":"eth-moved"}')).stdout, 'null');
  t.match((await sh('ip', ['-o', 'link', 'show', 'hostdev0'])).stdout, /mtu 1400.*02:00:00:00:aa:01/, 'back on the host, name, MTU and MAC restored');
  await sh('ip', ['link', 'del', 'hostdev0']);
});

t.test('containers ocinet did not set up: --runtime-root, --pid, --netns', async (t) => {
  const plain = await rc.bundle('plain', {}, 'del(.hooks)');
  t.equal((await rc.start('plainbox', plain)).exitCode, 0);
  const iface = JSON.stringify({ ...IFACE, device: 'tap-plain', IPAddresses: [] });
  const r = await net(['add-iface', 'plainb', '-', '--runtime-root', rc.root], iface);
  t.equal(r.exitCode, 0, r.stderr);
  t.equal(r.stdout, '{"device":"tap-plain","name":"eth-test","IPAddresses":null,"mtu":1500,"hwAddr":"02:42:20:6f:a3:69"}');
  const pid = await rc.pid('plainbox');
  const viaPid = await net(['list-ifaces', '--pid', String(pid)]);
  t.equal(viaPid.stdout, '[{"name":"eth-test","mac":"02:42:20:6f:a3:69","ip":[],"mtu":1500}]', 'same sandbox through --pid');
  t.equal((await net(['del-iface', '--netns', `/proc/${pid}/ns/net`, '-'], '{"name":"eth-test"}')).stdout, 'null', 'and through --netns');
  const self = await net(['list-ifaces', '--pid', String(process.pid)]);
  t.match(self.stderr, /ocinet's own network namespace/);
  await rc.stop('plainbox');
});

t.test('hook annotations add interfaces and routes; teardown and gc remove them', async (t) => {
  const ann = {
    'io.ocinet.interfaces': JSON.stringify([{ device: 'ocxann', name: 'eth-ann', IPAddresses: [{ address: '172.16.0.5', mask: '16' }], hwAddr: '02:42:20:6f:a3:70', mtu: 1400 }]),
    'io.ocinet.routes': JSON.stringify([{ dest: '177.18.0.0/24', gateway: '172.16.0.9', device: 'eth-ann' }]),
  };
  const b = await rc.bundle('annotated', { OCINET_ANNOTATIONS: JSON.stringify(ann) });
  const r = await rc.start('annotated', b);
  t.equal(r.exitCode, 0, r.stderr);
  t.match((await rc.exec('annotated', ['ip', '-o', 'addr', 'show', 'eth-ann'])).stdout, /172\.16\.0\.5\/16/);
  t.match((await rc.exec('annotated', ['ip', 'route'])).stdout, /177\.18\.0\.0\/24 via 172\.16\.0\.9 dev eth-ann/);
  t.equal((await net(['list-ifaces', 'annotated'])).stdout, '[{"name":"eth-ann","mac":"02:42:20:6f:a3:70","ip":["172.16.0.5/16"],"mtu":1400}]');
  await rc.stop('annotated');
  t.notMatch((await sh('ip', ['-o', 'link'])).stdout, /ocxann/, 'teardown removed the host end');

  const bad = { 'io.ocinet.interfaces': JSON.stringify([{ device: 'ocxbad', name: 'eth-bad', hwAddr: '02:42:20:6f:a3:71', mtu: 9601 }]) };
  const rb = await rc.start('badann', await rc.bundle('badann', { OCINET_ANNOTATIONS: JSON.stringify(bad) }));
  t.not(rb.exitCode, 0);
  t.match(rb.stderr, /annotation io\.ocinet\.interfaces\[0\] field 'mtu': must be <= 9600/);
  await rc.run(['delete', '--force', 'badann'], false);
  const clash = { 'io.ocinet.interfaces': JSON.stringify([{ device: 'ocinet0', name: 'eth-bad', hwAddr: '02:42:20:6f:a3:71', mtu: 1500 }]) };
  const rc2 = await rc.start('clash', await rc.bundle('clash', { OCINET_ANNOTATIONS: JSON.stringify(clash) }));
  t.not(rc2.exitCode, 0, 'a failure after eth0 was made rolls everything back');
  t.match(rc2.stderr, /belongs to the host or to ocinet/);
  await rc.run(['delete', '--force', 'clash'], false);

  // A sandbox that died without teardown: gc forgets it.
  t.equal((await net(['add-iface', ID, '-'], JSON.stringify({ ...IFACE, device: 'tap-gc' }))).exitCode, 0);
  await sh('kill', ['-9', String(await rc.pid(ID))]);
  await rc.run(['delete', '--force', ID], false); // its poststop cleans up; gc must still be a no-op after it
  const g = await cli(['gc', '--json', ...S]);
  t.equal(g.exitCode, 0, g.stderr);
  t.same(readdirSync(join(stateDir, 'sandboxes')), [], 'no sandbox records left');
  t.equal(await snapshot(stateDir), baseline, 'nothing left on the host');
});
