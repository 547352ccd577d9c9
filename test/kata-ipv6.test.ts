// Issue 11, part 3: kata-network takes IPv6. An interface with an IPv4 and an
// IPv6 address (printed back with kata's Family 2 and 10), list-ifaces showing
// both, a route with an IPv6 dest and gateway, traffic over it, and the IPv6
// validation rules, on a container sandbox named by --pid.
import t from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { cleanup, cli, inNs, sandbox, sh, snapshot, tempDir } from './lib/env.js';

const dir = tempDir('k6');
const sb = await sandbox();
await sh('ip', ['link', 'add', 'ock6br', 'type', 'bridge']);
await sh('ip', ['addr', 'add', 'fd00:77::1/64', 'dev', 'ock6br', 'nodad']);
await sh('ip', ['link', 'set', 'ock6br', 'up']);
const baseline = await snapshot(dir);
t.teardown(async () => {
  await sb.kill();
  cleanup(dir);
});
const net = (args: string[], input?: string) => cli(['network', ...args, '--state-dir', dir, '--pid', String(sb.pid)], input);

t.test('add-iface with an IPv4 and an IPv6 address, list-ifaces, a v6 route, traffic, del', async (t) => {
  const iface = { device: 'ock6v', name: 'eth6', IPAddresses: [{ address: '172.30.0.5', mask: '24' }, { address: 'fd00:77:0:0::5', mask: 64 }], hwAddr: '02:42:20:6f:a3:77', mtu: 1500 };
  const add = await net(['add-iface', '--bridge', 'ock6br', '-'], JSON.stringify(iface));
  t.equal(add.exitCode, 0, add.stderr);
  t.equal(add.stdout, '{"device":"ock6v","name":"eth6","IPAddresses":[{"Family":2,"Address":"172.30.0.5","Mask":"24"},{"Family":10,"Address":"fd00:77::5","Mask":"64"}],"mtu":1500,"hwAddr":"02:42:20:6f:a3:77"}');
  t.equal((await net(['list-ifaces'])).stdout, '[{"name":"eth6","mac":"02:42:20:6f:a3:77","ip":["172.30.0.5/24","fd00:77::5/64"],"mtu":1500}]');
  t.equal((await inNs(sb.pid, ['busybox', 'ping', '-6', '-c1', '-W2', 'fd00:77::1'], false)).exitCode, 0, 'the sandbox reaches the bridge over IPv6');

  const route = '{"dest":"2001:db8:abcd::/48","gateway":"fd00:77::1","device":"eth6"}';
  t.equal((await net(['add-route', '-'], route)).stdout, `[${route}]`);
  t.match((await inNs(sb.pid, ['ip', '-6', 'route', 'show', '2001:db8:abcd::/48'])).stdout, /2001:db8:abcd::\/48 via fd00:77::1 dev eth6/);
  const dup = await net(['add-route', '-'], route);
  t.match(dup.stderr, /a route to 2001:db8:abcd::\/48 already exists/, 'v6 routes are seen for clashes');
  t.equal((await net(['del-route', '-'], '{"dest":"2001:db8:abcd::/48"}')).stdout, `[${route}]`);
  t.equal((await net(['del-iface', '-'], '{"name":"eth6"}')).stdout, 'null');
  t.equal(await snapshot(dir), baseline);
});

t.test('IPv6 validation: null, one line, no change', async (t) => {
  const base = { device: 'ock6x', name: 'eth7', hwAddr: '02:42:20:6f:a3:78', mtu: 1500 };
  const bad: [string[], unknown, RegExp][] = [
    [['add-iface'], { ...base, IPAddresses: [{ address: 'fd00::5', mask: 129 }] }, /mask '129' of fd00::5 must be 0-128/],
    [['add-iface'], { ...base, IPAddresses: [{ address: 'fd00::5', mask: 64 }, { address: 'fd00::6', mask: 64 }] }, /one address per family/],
    [['add-iface'], { ...base, IPAddresses: [{ address: 'fd00::zz', mask: 64 }] }, /'fd00::zz' is not an IPv4 or IPv6 address/],
    [['add-route'], { dest: 'fd00:1::/48', gateway: '172.30.0.1', device: 'eth6' }, /are of different families/],
    [['add-route'], { dest: 'fd00:1::1/48', device: 'eth6' }, /has host bits set/],
    [['add-route'], { dest: 'fd00:1::/129', device: 'eth6' }, /must be 0-128/],
  ];
  for (const [cmd, input, why] of bad) {
    const r = await net([...cmd, '-'], JSON.stringify(input));
    t.equal(r.exitCode, 1);
    t.equal(r.stdout, 'null');
    t.match(r.stderr, why);
    t.equal(r.stderr.trim().split('\n').length, 1);
  }
  t.equal(await snapshot(dir), baseline);
});
