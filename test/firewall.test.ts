// Issue 11, part 2: one firewall interface, two backends. The nftables
// backend's tables and elements, its atomic transactions, a network keeping
// the backend it was made with, auto's choice, and bad --firewall values.
import t, { type Test } from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { cleanup, cli, hook, inNs, readDb, sandbox, sh, snapshot, state, tempDir, type Sandbox } from './lib/env.js';
import { stateId } from '../core/state/names.js';

const dir = tempDir('fw');
const sid = stateId(dir);
const NET = ['--state-dir', dir, '--subnet', '10.230.0.0/24'];
const setup = (id: string, pid: number, more: string[] = []) => hook([...NET, ...more], state(id, 'creating', pid));
const teardown = (id: string, more: string[] = []) => hook([...NET, ...more], state(id, 'stopped'));
const nftTable = async (family: string): Promise<string> => (await sh('nft', ['list', 'table', family, `ocinet-${sid}`], { reject: false })).stdout;
async function box(tt: Test): Promise<Sandbox> {
  const sb = await sandbox();
  tt.teardown(() => sb.kill());
  return sb;
}
const baseline = await snapshot(dir);
t.teardown(() => cleanup(dir));

t.test('nftables: two tables of the state dir, networks and containers as elements, nothing left after', async (t) => {
  const a = await box(t);
  const r = await setup('a', a.pid, ['--firewall', 'nftables', '--publish', '8080:80', '--publish', '5353:53/udp']);
  t.equal(r.exitCode, 0, r.stderr);
  const ip = JSON.parse(r.stdout).ip as string;
  const mac = /link\/ether (\S+)/.exec((await inNs(a.pid, ['ip', '-o', 'link', 'show', 'eth0'])).stdout)![1]!;
  const port = readDb(dir).containers['a']!.hostVeth!;
  const inet = await nftTable('inet');
  t.match(inet, /elements = \{ 10\.230\.0\.0\/24 \}/, 'the network: its subnet');
  t.match(inet, /elements = \{ "ocinet0" \}/, 'and its bridge');
  t.match(inet, new RegExp(`tcp \\. 8080 : ${ip.replace(/\./g, '\\.')} \\. 80`), 'a published tcp port');
  t.match(inet, new RegExp(`udp \\. 5353 : ${ip.replace(/\./g, '\\.')} \\. 53`), 'a published udp port');
  const bridge = await nftTable('bridge');
  t.match(bridge, new RegExp(`"${port}" \\. ${mac}`), "the port guard: the container's MAC");
  t.match(bridge, new RegExp(`"${port}" \\. ${ip.replace(/\./g, '\\.')}`), 'and its address');
  t.match(bridge, new RegExp(`"${port}" comment "${sid}:a"`), 'its port names the container');
  t.equal((readDb(dir).networks['ocinet0'] as { firewall?: string }).firewall, 'nftables', 'the network records its backend');
  t.notMatch((await sh('iptables-save', [])).stdout, /OCINET/, 'no iptables rules');
  t.equal((await teardown('a')).exitCode, 0);
  t.equal(await snapshot(dir), baseline, 'tables gone with the last network');
});

t.test('a failing nftables transaction leaves nothing of the container', async (t) => {
  const a = await box(t);
  const b = await box(t);
  t.equal((await setup('a', a.pid, ['--firewall', 'nftables'])).exitCode, 0);
  // Someone else's element on the key b asks for: nft refuses the whole transaction.
  await sh('nft', ['add', 'element', 'inet', `ocinet-${sid}`, 'dnat4', '{ tcp . 9090 : 10.230.0.250 . 80 }']);
  const before = await snapshot(dir);
  const r = await setup('b', b.pid, ['--publish', '9090:80']);
  t.equal(r.exitCode, 1);
  t.match(r.stderr, /^ocinet-hook: nft: Could not process rule: File exists: add element inet ocinet-[0-9a-f]{8} dnat4 \{ tcp \. 9090 : 10\.230\.0\.\d+ \. 80 \}$/, 'one line: what nft refused');
  // (The pool's cursor moves on: host-local style, the next address is tried next.)
  const noCursor = (s: string): string => s.replace(/\\"lastIp\\":\\"[\d.]+\\"/g, '');
  t.equal(noCursor(await snapshot(dir)), noCursor(before), "no guard entry, veth or lease of b's left");
  await sh('nft', ['delete', 'element', 'inet', `ocinet-${sid}`, 'dnat4', '{ tcp . 9090 }']);
  t.equal((await teardown('a')).exitCode, 0);
  t.equal(await snapshot(dir), baseline);
});

t.test('a network keeps its backend; another is refused while a container uses it, and taken when none does', async (t) => {
  const a = await box(t);
  t.equal((await setup('a', a.pid, ['--firewall', 'iptables', '--keep-bridge'])).exitCode, 0);
  const b = await box(t);
  const r = await setup('b', b.pid, ['--firewall', 'nftables']);
  t.equal(r.exitCode, 1);
  t.match(r.stderr, /network ocinet0 uses firewall backend iptables \(container a is on it\), not nftables: tear its containers down first/);
  t.equal((await setup('b', b.pid)).exitCode, 0, 'auto joins the network on its own backend');
  t.equal((readDb(dir).containers['b'] as { firewall?: string }).firewall, 'iptables');
  t.equal((await teardown('a', ['--keep-bridge'])).exitCode, 0);
  t.equal((await teardown('b', ['--keep-bridge'])).exitCode, 0);
  t.match((await sh('iptables-save', ['-t', 'nat'])).stdout, /OCINET-POSTROUTING/, '--keep-bridge kept the network');
  const c = await box(t);
  const s = await setup('c', c.pid, ['--firewall', 'nftables', '--keep-bridge']);
  t.equal(s.exitCode, 0, s.stderr);
  t.equal((readDb(dir).networks['ocinet0'] as { firewall?: string }).firewall, 'nftables', 'with no container on it, the network moves to nftables');
  t.notMatch((await sh('iptables-save', [])).stdout, /OCINET/, "the iptables rules went");
  t.equal((await inNs(c.pid, ['busybox', 'ping', '-c1', '-W2', '10.230.0.1'], false)).exitCode, 0);
  t.equal((await teardown('c')).exitCode, 0);
  t.equal((await cli(['gc', '--state-dir', dir])).exitCode, 0);
  await sh('ip', ['link', 'del', 'ocinet0'], { reject: false });
  t.equal(await snapshot(dir), baseline);
});

t.test('auto: nftables, unless iptables drops forwarding by policy', async (t) => {
  const a = await box(t);
  t.equal((await setup('a', a.pid)).exitCode, 0);
  t.equal((readDb(dir).networks['ocinet0'] as { firewall?: string }).firewall, 'nftables');
  t.equal((await teardown('a')).exitCode, 0);
  await sh('iptables', ['-P', 'FORWARD', 'DROP']);
  t.teardown(() => sh('iptables', ['-P', 'FORWARD', 'ACCEPT']));
  const b = await box(t);
  t.equal((await setup('b', b.pid)).exitCode, 0);
  t.equal((readDb(dir).networks['ocinet0'] as { firewall?: string }).firewall, 'iptables', "a DROP policy in iptables' FORWARD: iptables, whose chains sit inside it");
  t.equal((await teardown('b')).exitCode, 0);
  await sh('iptables', ['-P', 'FORWARD', 'ACCEPT']);
  t.equal(await snapshot(dir), baseline);
});

t.test('bad --firewall: one line, nothing changed', async (t) => {
  const a = await box(t);
  for (const v of ['nft', 'IPTABLES', '', 'firewalld']) {
    const r = await setup('a', a.pid, ['--firewall', v]);
    t.equal(r.exitCode, 1, v);
    t.match(r.stderr, new RegExp(`^ocinet-hook: --firewall '${v}' must be auto, nftables or iptables$`));
  }
  t.equal(await snapshot(dir), baseline);
});

t.test('gc takes back nftables elements no record holds', async (t) => {
  const a = await box(t);
  t.equal((await setup('a', a.pid, ['--firewall', 'nftables', '--publish', '8081:80'])).exitCode, 0);
  const T = `ocinet-${sid}`;
  await sh('nft', ['add', 'element', 'bridge', T, 'ports', '{ "ocv0000000000" }']);
  await sh('nft', ['add', 'element', 'inet', T, 'dnat4', '{ tcp . 8099 : 10.230.0.77 . 80 }']);
  const r = await cli(['gc', '--state-dir', dir, '--json']);
  t.equal(r.exitCode, 0, r.stderr);
  const bridge = await nftTable('bridge');
  const inet = await nftTable('inet');
  t.notMatch(bridge, /ocv0000000000/, 'a stale port entry went');
  t.notMatch(inet, /8099/, 'a stale DNAT entry went');
  t.match(inet, /tcp \. 8081/, "the live container's stayed");
  t.equal((await teardown('a')).exitCode, 0);
  t.equal(await snapshot(dir), baseline);
});
