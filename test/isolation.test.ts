// Issue 9, items 9 and 10: rules are matched by exact tags, and one state dir
// owns its networks: teardown, reload and gc of one state dir never touch
// another's rules, links or bridges, and a bridge has one state dir.
import t, { type Test } from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { cleanup, cli, hook, inNs, readDb, sandbox, sh, state, tempDir, type Sandbox } from './lib/env.js';
import { savedComment, savedTarget, savedWords } from '../core/firewall/iptables/tables.js';
import { containerTag, dnatChain, hostVethName, stateId } from '../core/state/names.js';
import { publishScript } from '../core/firewall/iptables/ports.js';

// The iptables backend's tags and chains are what this file checks.
const net = (bridge: string, subnet: string): string[] => ['--bridge', bridge, '--subnet', subnet, '--firewall', 'iptables'];
const setup = (dir: string, n: string[], id: string, pid: number, more: string[] = []) => hook(['--state-dir', dir, ...n, ...more], state(id, 'creating', pid));
const teardown = (dir: string, n: string[], id: string) => hook(['--state-dir', dir, ...n], state(id, 'stopped'));

/** Every rule line (both tables), sorted. */
async function rules(): Promise<string[]> {
  return (await sh('iptables-save', [])).stdout.split('\n').filter((l) => l.startsWith('-A ')).sort();
}
async function links(): Promise<string[]> {
  return (await sh('ip', ['-o', 'link', 'show'])).stdout.split('\n').map((l) => l.split(':')[1]?.trim().split('@')[0] ?? '').filter(Boolean).sort();
}
/** A network's own rules, whatever their tag: its MASQUERADE and both FORWARD rules. */
function networkRules(all: string[], bridge: string, subnet: string): string[] {
  return all.filter((l) => l.includes(`-s ${subnet} ! -d ${subnet}`) || l.includes(`-i ${bridge} `) || l.includes(`-o ${bridge} `));
}
/** A stand-in container that dies with the test, even one that failed halfway. */
async function box(t: Test): Promise<Sandbox> {
  const sb = await sandbox();
  t.teardown(() => sb.kill());
  return sb;
}
const pings = async (pid: number, gw: string): Promise<boolean> => (await inNs(pid, ['busybox', 'ping', '-c1', '-W2', gw], false)).exitCode === 0;

t.test('saved rules are parsed into words: comments and targets compared whole', async (t) => {
  const line = '-A OCINET-DNAT -m comment --comment "ocinet:ab12cd34:c1 x\\"y\\\\" -j OCINET-DN-ab12cd34-0123456789';
  t.same(savedWords(line).slice(4), ['--comment', 'ocinet:ab12cd34:c1 x"y\\', '-j', 'OCINET-DN-ab12cd34-0123456789']);
  t.equal(savedComment(line), 'ocinet:ab12cd34:c1 x"y\\');
  t.equal(savedTarget(line), 'OCINET-DN-ab12cd34-0123456789');
  t.equal(savedComment('-A X -m comment --comment "ocinet-net:oc10" -j ACCEPT'), 'ocinet-net:oc10', 'oc10 is not oc1');
  t.equal(savedComment('-A X -j ACCEPT'), undefined);
  // Names: the state id is in every new per-container name; records of the previous version keep theirs.
  const a = stateId('/run/ocinet-a');
  const b = stateId('/run/ocinet-b');
  t.match(a, /^[0-9a-f]{8}$/);
  t.not(a, b);
  t.not(hostVethName('c1', a), hostVethName('c1', b), 'same id, two state dirs: two veths');
  t.match(hostVethName('c1', a), /^ocv[0-9a-f]{10}$/);
  t.equal(dnatChain('c1', a).length, 28, 'chain names fit iptables (28 chars)');
  t.match(dnatChain('c1', a), new RegExp(`^OCINET-DN-${a}-[0-9a-f]{9}$`));
  t.match(dnatChain('c1'), /^OCINET-DN-[0-9a-f]{12}$/, 'the previous version name');
  t.equal(containerTag('c1', a), `${a}:c1`);
  const long = 'x'.repeat(1024);
  t.not(containerTag(long, a), containerTag(long.slice(0, 1023) + 'y', a), 'long ids keep distinct tags');
  t.ok(containerTag(long, a).length < 240);
  const s = publishScript({ chain: dnatChain('c1', a), tag: containerTag('c1', a) }, '10.0.0.2', '10.0.0.0/24', [{ hostPort: 8080, containerPort: 80, proto: 'tcp' }]).text();
  t.match(s, `--comment ocinet:${a}:c1 -j ${dnatChain('c1', a)}`);
});

t.test('item 9: a network on oc1 does not take the rules of oc10 (same state dir and another)', async (t) => {
  const dir = tempDir('iso-sub');
  const other = tempDir('iso-sub2');
  const n10 = net('oc10', '10.221.0.0/24');
  const n1 = net('oc1', '10.222.0.0/24');
  const sb10 = await box(t);
  const sb1 = await box(t);
  t.equal((await setup(dir, n10, 'c10', sb10.pid)).exitCode, 0);
  const mine = networkRules(await rules(), 'oc10', '10.221.0.0/24');
  t.equal(mine.length, 4, "oc10's MASQUERADE, FORWARD and localhost guard rules");
  for (const d of [dir, other]) {
    const r = await setup(d, n1, 'c1', sb1.pid);
    t.equal(r.exitCode, 0, r.stderr);
    t.same(networkRules(await rules(), 'oc10', '10.221.0.0/24'), mine, `setup on oc1 keeps oc10's rules (${d === dir ? 'same' : 'another'} state dir)`);
    t.equal((await teardown(d, n1, 'c1')).exitCode, 0);
    t.same(networkRules(await rules(), 'oc10', '10.221.0.0/24'), mine, `teardown on oc1 keeps oc10's rules (${d === dir ? 'same' : 'another'} state dir)`);
  }
  t.ok(await pings(sb10.pid, '10.221.0.1'));
  t.equal((await teardown(dir, n10, 'c10')).exitCode, 0);
  t.same(networkRules(await rules(), 'oc10', '10.221.0.0/24'), []);
  await Promise.all([sb10.kill(), sb1.kill()]);
  cleanup(dir);
  cleanup(other);
});

t.test('item 10: the last teardown of one state dir keeps every rule of another', async (t) => {
  const a = tempDir('iso-a');
  const b = tempDir('iso-b');
  const na = net('ocA', '10.223.0.0/24');
  const nb = net('ocB', '10.224.0.0/24');
  const sa = await box(t);
  const sbb = await box(t);
  t.equal((await setup(a, na, 'a1', sa.pid, ['--publish', '8181:80'])).exitCode, 0);
  const before = await rules();
  t.ok(before.some((l) => l.includes('--dport 8181')), "a's published port");
  const r = await setup(b, nb, 'b1', sbb.pid, ['--publish', '8182:80']);
  t.equal(r.exitCode, 0, r.stderr);
  t.equal((await teardown(b, nb, 'b1')).exitCode, 0);
  t.same(await rules(), before, "b's last teardown left a's rules, chains and jumps as they were");
  t.ok(await pings(sa.pid, '10.223.0.1'));
  // And the other way round: a's last teardown, b set up again, then everything goes.
  t.equal((await setup(b, nb, 'b1', sbb.pid)).exitCode, 0);
  const withB = networkRules(await rules(), 'ocB', '10.224.0.0/24');
  t.equal((await teardown(a, na, 'a1')).exitCode, 0);
  t.same(networkRules(await rules(), 'ocB', '10.224.0.0/24'), withB, "a's last teardown left b's rules");
  t.ok((await rules()).some((l) => l.startsWith('-A POSTROUTING') && l.endsWith('-j OCINET-POSTROUTING')), 'shared jumps stay while b has a network');
  t.equal((await teardown(b, nb, 'b1')).exitCode, 0);
  t.same((await rules()).filter((l) => l.includes('OCINET')), [], 'the last network of all takes the shared chains');
  await Promise.all([sa.kill(), sbb.kill()]);
  cleanup(a);
  cleanup(b);
});

t.test("item 10: gc in one state dir keeps another's veths, ports chains and bridge", async (t) => {
  const a = tempDir('iso-gca');
  const b = tempDir('iso-gcb');
  const na = net('ocgA', '10.225.0.0/24');
  const sa = await box(t);
  t.equal((await setup(a, na, 'a1', sa.pid, ['--publish', '8183:80'])).exitCode, 0);
  // b once had a network of its own, so its gc has a bridge and rules to look at.
  const sbb = await box(t);
  t.equal((await setup(b, net('ocgB', '10.226.0.0/24'), 'b1', sbb.pid)).exitCode, 0);
  const vb = readDb(b).containers.b1!.hostVeth;
  await sbb.kill();
  const l0 = await links();
  const r0 = (await rules()).filter((l) => networkRules([l], 'ocgA', '10.225.0.0/24').length || l.includes('OCINET-DN'));
  const g = await cli(['gc', '--json', '--state-dir', b]);
  t.equal(g.exitCode, 0, g.stderr);
  const rep = JSON.parse(g.stdout) as { containers: string[]; links: string[]; chains: string[]; bridges: string[] };
  t.same(rep.containers, ['b1'], "b's own dead container goes");
  t.same(rep.links, [], "a's veth is not b's");
  t.same(rep.chains, [], "a's ports chain is not b's");
  t.same(rep.bridges, ['ocgB'], "only b's own bridge");
  t.same(await links(), l0.filter((l) => l !== 'ocgB' && l !== vb), "a's veth and bridge are there");
  const r1 = (await rules()).filter((l) => r0.includes(l));
  t.same(r1, r0, "a's rules are all there");
  t.ok(await pings(sa.pid, '10.225.0.1'), "a's container still reaches its gateway");
  // a's own gc, with a's container alive, removes nothing of it.
  const ga = JSON.parse((await cli(['gc', '--json', '--state-dir', a])).stdout) as { links: string[]; chains: string[]; bridges: string[] };
  t.same([ga.links, ga.chains, ga.bridges], [[], [], []]);
  t.equal((await teardown(a, na, 'a1')).exitCode, 0);
  await sa.kill();
  cleanup(a);
  cleanup(b);
});

t.test('item 10: a bridge another state dir uses is refused (no address handed out twice)', async (t) => {
  const a = tempDir('iso-bra');
  const b = tempDir('iso-brb');
  const n = net('ocS', '10.227.0.0/24');
  const sa = await box(t);
  const sbb = await box(t);
  t.equal((await setup(a, n, 'a1', sa.pid)).exitCode, 0);
  const l0 = await links();
  const r0 = await rules();
  const r = await setup(b, n, 'b1', sbb.pid);
  t.equal(r.exitCode, 1, 'refused');
  t.match(r.stderr, /^ocinet-hook: .*bridge ocS belongs to another ocinet state dir/);
  t.equal(r.stderr.trim().split('\n').length, 1, 'one line');
  t.same(Object.keys(readDb(b).containers), [], 'no lease in b');
  t.same(await links(), l0, 'no link made or removed');
  t.same(await rules(), r0, 'no rule made or removed');
  t.equal((await teardown(b, n, 'b1')).exitCode, 0, "b's teardown is a no-op");
  t.ok(l0.includes('ocS') && (await links()).includes('ocS'), "the bridge a still uses is there");
  t.ok(await pings(sa.pid, '10.227.0.1'));

  // A bridge ocinet did not make (no alias): the other state dir's rules for it say it is taken.
  await sh('ip', ['link', 'add', 'ocadm', 'type', 'bridge']);
  const sa2 = await box(t);
  t.equal((await setup(a, net('ocadm', '10.228.0.0/24'), 'a2', sa2.pid)).exitCode, 0);
  const r2 = await setup(b, net('ocadm', '10.228.0.0/24'), 'b2', sbb.pid);
  t.equal(r2.exitCode, 1);
  t.match(r2.stderr, /^ocinet-hook: bridge ocadm is in use by another ocinet state dir/);
  t.same(Object.keys(readDb(b).containers), []);
  t.ok(await pings(sa2.pid, '10.228.0.1'));
  for (const id of ['a1', 'a2']) t.equal((await hook(['--state-dir', a], state(id, 'stopped'))).exitCode, 0);
  t.ok((await links()).includes('ocadm'), 'the bridge ocinet did not make stays');
  await sh('ip', ['link', 'del', 'ocadm']);
  await Promise.all([sa.kill(), sa2.kill(), sbb.kill()]);
  cleanup(a);
  cleanup(b);
});

t.test('item 10: the same container id in two state dirs gets two veths and two ports chains', async (t) => {
  const a = tempDir('iso-ida');
  const b = tempDir('iso-idb');
  const na = net('ocIA', '10.229.0.0/24');
  const nb = net('ocIB', '10.230.0.0/24');
  const sa = await box(t);
  const sbb = await box(t);
  t.equal((await setup(a, na, 'same', sa.pid, ['--publish', '8184:80'])).exitCode, 0);
  const ra = (await rules()).filter((l) => l.includes('--dport 8184') || l.includes('OCINET-DN'));
  const r = await setup(b, nb, 'same', sbb.pid, ['--publish', '8185:80']);
  t.equal(r.exitCode, 0, r.stderr);
  const va = readDb(a).containers.same!.hostVeth;
  const vb = readDb(b).containers.same!.hostVeth;
  t.not(va, vb);
  t.ok((await rules()).some((l) => l.includes('--dport 8185')), "b's port");
  t.same((await rules()).filter((l) => ra.includes(l)), ra, "a's ports chain untouched by b's setup");
  t.equal((await teardown(b, nb, 'same')).exitCode, 0);
  t.same((await rules()).filter((l) => ra.includes(l)), ra, "a's ports chain untouched by b's teardown");
  t.ok((await links()).includes(va!), "a's veth is there");
  t.ok(await pings(sa.pid, '10.229.0.1'));
  t.equal((await teardown(a, na, 'same')).exitCode, 0);
  await Promise.all([sa.kill(), sbb.kill()]);
  cleanup(a);
  cleanup(b);
});

t.test("item 9: removing a ports chain by listing matches its comment whole, never another tool's rule", async (t) => {
  const dir = tempDir('iso-tag');
  const n = net('ocT', '10.231.0.0/24');
  const sb = await box(t);
  t.equal((await setup(dir, n, 'c1', sb.pid, ['--publish', '8186:80'])).exitCode, 0);
  // Another tool's rules whose comments hold the text `ocinet:c1` (or ours with a prefix).
  await sh('iptables', ['-t', 'nat', '-N', 'FOREIGN']);
  const tag = readDb(dir).containers.c1 as unknown as { tag: string };
  for (const c of ['keep ocinet:c1', `keep ocinet:${tag.tag}`, `x ocinet:${tag.tag} y`]) {
    await sh('iptables', ['-t', 'nat', '-A', 'FOREIGN', '-m', 'comment', '--comment', c, '-j', 'RETURN']);
  }
  const foreign = (await rules()).filter((l) => l.startsWith('-A FOREIGN'));
  t.equal(foreign.length, 3);
  // Take the jump away, so that the exact removal fails and teardown lists and matches.
  t.equal((await rules()).filter((l) => l.startsWith('-A OCINET-DNAT')).length, 1, 'one jump to a ports chain');
  await sh('iptables', ['-t', 'nat', '-D', 'OCINET-DNAT', '1']);
  t.equal((await teardown(dir, n, 'c1')).exitCode, 0);
  t.same((await rules()).filter((l) => l.startsWith('-A FOREIGN')), foreign, "another tool's rules are still there");
  t.same((await rules()).filter((l) => l.includes('8186')), [], "c1's rules are gone");
  await sh('iptables', ['-t', 'nat', '-F', 'FOREIGN']);
  await sh('iptables', ['-t', 'nat', '-X', 'FOREIGN']);
  await sb.kill();
  cleanup(dir);
});
