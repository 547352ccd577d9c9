// Issue 11, part 3: dual stack IPv6 on the nftables backend. Two stand-in
// containers on --subnet6, an outside host reached over IPv6 (masquerade), a
// published port over IPv6 from outside and hairpin, a static io.ocinet.ip6,
// IPv6 anti-spoofing, bad inputs, and nothing left after.
import t from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cli, hook, httpGet, inNs, outsideAndBaseline, sandbox, sh, snapshot, state, tempDir, type Sandbox } from './lib/env.js';

const work = tempDir('ds');
const dir = join(work, 'state');
const www = join(work, 'www');
mkdirSync(www);
writeFileSync(join(www, 'index.html'), 'hello over v6\n');
const NET = ['--state-dir', dir, '--subnet', '10.232.0.0/24', '--subnet6', 'fd00:232::/64'];

// The outside host, with IPv6 on its link too.
const { outside, baseline } = await outsideAndBaseline(t, work, async (o) => {
  await sh('ip', ['addr', 'add', '2001:db8:9::1/64', 'dev', 'ocout0', 'nodad']);
  await inNs(o.sb.pid, ['ip', 'addr', 'add', '2001:db8:9::2/64', 'dev', 'eth0', 'nodad']);
  await inNs(o.sb.pid, ['ip', '-6', 'route', 'add', 'default', 'via', '2001:db8:9::1']);
});

const wget = (pid: number | undefined, url: string): Promise<string> => httpGet(url, pid);
const ping6 = async (pid: number, to: string, from?: string): Promise<number> =>
  (await inNs(pid, ['busybox', 'ping', '-6', '-c1', '-W2', ...(from ? ['-I', from] : []), to], false)).exitCode;

t.test('dual stack: addresses, routes, v6 between containers, masquerade, published port from outside and hairpin', async (t) => {
  const a = await sandbox();
  const b = await sandbox();
  t.teardown(() => Promise.all([a.kill(), b.kill()]));
  const httpd = spawn('nsenter', [`--net=/proc/${a.pid}/ns/net`, '--', 'busybox', 'httpd', '-f', '-p', '80', '-h', www], { stdio: 'ignore' });
  t.teardown(() => void httpd.kill('SIGKILL'));
  const ra = await hook([...NET, '--publish', '8080:80'], state('a', 'creating', a.pid));
  t.equal(ra.exitCode, 0, ra.stderr);
  const resA = JSON.parse(ra.stdout) as { ip6: string; gateway6: string };
  t.equal(resA.gateway6, 'fd00:232::1');
  t.equal(resA.ip6, 'fd00:232::2', 'the first address after the gateway');
  const rb = await hook([...NET, '--firewall', 'nftables'], state('b', 'creating', b.pid, { annotations: { 'io.ocinet.ip6': 'fd00:232::beef' } }));
  t.equal(rb.exitCode, 0, rb.stderr);
  t.equal((JSON.parse(rb.stdout) as { ip6: string }).ip6, 'fd00:232::beef', 'a static io.ocinet.ip6');

  t.match((await inNs(a.pid, ['ip', '-6', 'addr', 'show', 'dev', 'eth0'])).stdout, /inet6 fd00:232::2\/64 scope global nodad/);
  t.match((await inNs(a.pid, ['ip', '-6', 'route', 'show', 'default'])).stdout, /default via fd00:232::1 dev eth0/);
  t.match((await sh('ip', ['-6', 'addr', 'show', 'dev', 'ocinet0'])).stdout, /inet6 fd00:232::1\/64/, 'the bridge holds the v6 gateway');
  t.equal((await sh('cat', ['/proc/sys/net/ipv6/conf/ocinet0/accept_ra'])).stdout, '0', 'and takes no RAs: the host is the only router');

  t.equal(await ping6(b.pid, 'fd00:232::2'), 0, 'b pings a over IPv6');
  t.equal(await ping6(a.pid, 'fd00:232::beef'), 0, 'a pings b over IPv6');
  t.equal(await wget(a.pid, 'http://[2001:db8:9::2]:7000/'), 'peer=2001:db8:9::1', "the outside host sees the host's v6 address (masquerade)");
  t.equal(await wget(outside.sb.pid, 'http://[2001:db8:9::1]:8080/'), 'hello over v6', 'the published port over IPv6 from outside');
  t.equal(await wget(b.pid, 'http://[2001:db8:9::1]:8080/'), 'hello over v6', 'hairpin over IPv6 from a neighbour');
  t.equal(await wget(outside.sb.pid, 'http://192.0.2.1:8080/'), 'hello over v6', 'and over IPv4 as before');
  t.equal(await wget(undefined, 'http://127.0.0.1:8080/'), 'hello over v6', '127.0.0.1 as before (::1 cannot be DNATed: no route_localnet for IPv6)');

  const list = JSON.parse((await cli(['list', '--json', '--state-dir', dir])).stdout) as { id: string; ips: string[] }[];
  t.same(list.find((c) => c.id === 'a')!.ips, ['10.232.0.2/24', 'fd00:232::2/64'], 'list: both addresses');

  // Anti-spoofing holds for IPv6: a's packets from b's v6 address are dropped, its own pass.
  await inNs(a.pid, ['ip', 'addr', 'add', 'fd00:232::beef/128', 'dev', 'eth0', 'nodad']);
  t.not(await ping6(a.pid, 'fd00:232::1', 'fd00:232::beef'), 0, "a sending from b's v6 address is dropped");
  await inNs(a.pid, ['ip', 'addr', 'del', 'fd00:232::beef/128', 'dev', 'eth0']);
  t.equal(await ping6(a.pid, 'fd00:232::1'), 0, 'from its own it passes');

  t.equal((await hook(NET, state('a', 'stopped'))).exitCode, 0);
  t.equal((await hook(NET, state('b', 'stopped'))).exitCode, 0);
  t.equal(await snapshot(), baseline, 'nothing left: links, tables, leases');
});

t.test('bad IPv6 input: one line, nothing changed', async (t) => {
  const sb: Sandbox = await sandbox();
  t.teardown(() => sb.kill());
  const before = await snapshot(dir);
  const cases: [string[], Record<string, string>, RegExp][] = [
    [['--subnet6', '10.0.0.0/24'], {}, /--subnet6 '10\.0\.0\.0\/24' is not IPv6 CIDR/],
    [['--subnet6', 'fd00:232::1/64'], {}, /has host bits set \(did you mean fd00:232::\/64\?\)/],
    [['--subnet6', 'fd00::/48'], {}, /prefix must be \/64 to \/120/],
    [['--subnet6', 'fd00:232::/64', '--firewall', 'iptables'], {}, /--subnet6 needs the nftables firewall backend/],
    [['--subnet6', 'fd00:232::/64'], { 'io.ocinet.ip6': '10.232.0.9' }, /annotation io\.ocinet\.ip6: '10\.232\.0\.9' is not an IPv6 address/],
    [[], { 'io.ocinet.ip6': 'fd00:232::9' }, /annotation io\.ocinet\.ip6: the network has no IPv6 subnet/],
    [['--subnet6', 'fd00:232::/64'], { 'io.ocinet.ip6': 'fd00:999::9' }, /static address fd00:999::9 is outside subnet fd00:232::\/64/],
    [['--subnet6', 'fd00:232::/64'], { 'io.ocinet.ip6': 'fd00:232::1' }, /is the network or gateway address of fd00:232::\/64/],
  ];
  for (const [flags, annotations, why] of cases) {
    const args = ['--state-dir', dir, '--subnet', '10.232.0.0/24', ...flags];
    const r = await hook(args, state('x', 'creating', sb.pid, Object.keys(annotations).length ? { annotations } : {}));
    t.equal(r.exitCode, 1, flags.join(' '));
    t.match(r.stderr, why);
    t.equal(r.stderr.trim().split('\n').length, 1, 'one line');
  }
  // A known network's IPv6 subnet is its own: another is refused.
  const a = await sandbox();
  t.teardown(() => a.kill());
  t.equal((await hook(NET, state('a', 'creating', a.pid))).exitCode, 0);
  const other = await hook(['--state-dir', dir, '--subnet', '10.232.0.0/24', '--subnet6', 'fd00:233::/64'], state('x', 'creating', sb.pid));
  t.match(other.stderr, /bridge ocinet0 is in use by ocinet with IPv6 subnet fd00:232::\/64, not fd00:233::\/64/);
  t.equal((await hook(NET, state('a', 'stopped'))).exitCode, 0);
  t.equal(await snapshot(dir), before);
});

t.test('a truncated state file on a dual stack network: rebuilt from the kernel, the next teardown leaves nothing', async (t) => {
  const a = await sandbox();
  t.teardown(() => a.kill());
  t.equal((await hook([...NET, '--publish', '8082:80'], state('a', 'creating', a.pid))).exitCode, 0);
  writeFileSync(join(dir, 'state.json'), '{"version":1,"netw');
  const down = await hook(NET, state('a', 'stopped'));
  t.equal(down.exitCode, 0, down.stderr);
  t.match(down.stderr, /rebuilt the state from the kernel: 1 container, 1 bridge/);
  t.equal((await cli(['gc', '--state-dir', dir])).exitCode, 0);
  t.equal(await snapshot(), baseline, 'the v6 lease, its guard entry and DNAT elements went with it');
});

t.test('live publish and unpublish on a dual stack container: both families', async (t) => {
  const a = await sandbox();
  t.teardown(() => a.kill());
  const httpd = spawn('nsenter', [`--net=/proc/${a.pid}/ns/net`, '--', 'busybox', 'httpd', '-f', '-p', '80', '-h', www], { stdio: 'ignore' });
  t.teardown(() => void httpd.kill('SIGKILL'));
  t.equal((await hook(NET, state('a', 'creating', a.pid))).exitCode, 0);
  const pub = await cli(['publish', 'a', '8084:80', '--state-dir', dir]);
  t.equal(pub.exitCode, 0, pub.stderr);
  t.equal(await wget(outside.sb.pid, 'http://[2001:db8:9::1]:8084/'), 'hello over v6', 'published live: over IPv6 from outside');
  t.equal(await wget(outside.sb.pid, 'http://192.0.2.1:8084/'), 'hello over v6', 'and over IPv4');
  t.equal((await cli(['unpublish', 'a', '8084:80', '--state-dir', dir])).exitCode, 0);
  t.not(await wget(outside.sb.pid, 'http://[2001:db8:9::1]:8084/'), 'hello over v6', 'unpublished: gone over IPv6');
  t.equal((await hook(NET, state('a', 'stopped'))).exitCode, 0);
  t.equal(await snapshot(), baseline);
});
