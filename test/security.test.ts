// Issue 10: what a container's packets may not reach. Real runc attacker
// containers (root in their network namespace: CAP_NET_ADMIN, CAP_NET_RAW,
// and a sysctl of their own bundle's) try each attack against the built hook:
// the host's 127.0.0.1-only services, IPv6 router advertisements, the admin's
// FORWARD policy, and a neighbour's address. The legitimate paths must keep
// working next to them: published ports via 127.0.0.1 and the host address,
// hairpin, outbound masquerade, container to container.
import t from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { execFileSync } from 'node:child_process';
import { copyFileSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { cleanup, cli, inNs, outsideHost, ROOT, sh, sleep, snapshot, tempDir } from './lib/env.js';
import { Runc } from './lib/runc.js';

const work = tempDir('security');
const stateDir = join(work, 'state');
const l2send = join(work, 'l2-send');
execFileSync('gcc', ['-static', '-O2', '-o', l2send, join(ROOT, 'test/tools/l2-send.c')]);

// Once per backend: iptables here, nftables through security-nftables.test.ts.
const FIREWALL = process.env.OCINET_TEST_FIREWALL ?? 'iptables';
const NFT = FIREWALL === 'nftables';

// The admin's firewall, there before any container: one network no container
// may reach, and (iptables) forwarding dropped by default. An nftables table's
// accept cannot override iptables' DROP policy: on nftables the admin's drops
// apply as they are, and that policy would drop all container traffic.
if (!NFT) await sh('iptables', ['-P', 'FORWARD', 'DROP']);
await sh('iptables', ['-A', 'FORWARD', '-d', '198.51.100.0/24', '-j', 'DROP']);

const outside = await outsideHost('ocout0', '192.0.2.1', '192.0.2.2');
const blocked = await outsideHost('ocblk0', '198.51.100.1', '198.51.100.2');

// A service of the host's that listens on 127.0.0.1 only.
const secret = createServer((s) => s.end('secret\n')).listen(9999, '127.0.0.1');
await sleep(300);
const baseline = await snapshot();

const hookArgs = (...more: string[]): string[] => ['--state-dir', stateDir, '--firewall', FIREWALL, ...more];
const rc = new Runc(work, join(work, 'runc'), hookArgs('--subnet', '10.213.0.0/24'));
const spoofRc = new Runc(work, join(work, 'runc-sp'), hookArgs('--bridge', 'ocsp0', '--subnet', '10.214.0.0/24', '--allow-spoofing'));

/** A busybox container serving `hello from NAME` on port 80; an attacker is root in its netns. */
async function container(r: Runc, name: string, o: { publish?: string; attacker?: boolean } = {}): Promise<{ ip: string; mac: string }> {
  const env: Record<string, string> = o.publish ? { OCINET_ANNOTATIONS: JSON.stringify({ 'io.ocinet.publish': o.publish }) } : {};
  const edit = o.attacker
    ? '.process.capabilities |= with_entries(.value += ["CAP_NET_ADMIN", "CAP_NET_RAW"] | .value |= unique)' +
      ' | .linux.sysctl = {"net.ipv4.conf.all.route_localnet": "1"}'
    : undefined;
  const dir = await r.bundle(name, env, edit);
  if (o.attacker) copyFileSync(l2send, join(dir, 'rootfs/bin/l2-send'));
  const s = await r.start(name, dir);
  if (s.exitCode !== 0) throw new Error(`runc run ${name}: ${s.stderr}`);
  const addr = (await r.exec(name, ['ip', '-4', '-o', 'addr', 'show', 'eth0'])).stdout;
  const mac = (await r.exec(name, ['cat', '/sys/class/net/eth0/address'])).stdout.trim();
  return { ip: /inet ([\d.]+)\//.exec(addr)![1]!, mac };
}

const a = await container(rc, 'attacker', { attacker: true });
const b = await container(rc, 'victim', { publish: '8080:80' });
await container(rc, 'neighbour');
const exec = (id: string, args: string[]) => rc.exec(id, args);
const wget = async (url: string): Promise<string> => (await sh('timeout', ['10', 'busybox', 'wget', '-qO-', url], { reject: false })).stdout.trim();
const hostRoutes6 = async (): Promise<string> => (await sh('ip', ['-6', 'route', 'show', 'default'])).stdout.trim();
/** What a guard rule drops: router advertisements, ARP from another address, other ethertypes. */
type Drop = 'ra' | 'arp' | 'other';
const EBT: Record<Drop, RegExp> = { ra: /--ip6-icmp-type router-advertisement /, arp: /--arp-ip-src ! /, other: /^-A \S+ -j DROP$/ };
const NFT_RULE: Record<Drop, RegExp> = { ra: /nd-router-advert/, arp: /arp saddr ip != @portip/, other: /meta protocol != \{ ip, arp, ip6 \}/ };

/** Packets a guard rule has dropped: `port`'s own chain (ebtables), or the shared rule (nftables: the attacker is the only sender). */
async function guardCount(port: string, what: Drop): Promise<number> {
  if (NFT) {
    const table = (await sh('nft', ['list', 'tables'])).stdout.match(/table bridge (ocinet-\S+)/)?.[1] ?? '';
    const rule = (await sh('nft', ['list', 'table', 'bridge', table])).stdout.split('\n').find((l) => NFT_RULE[what].test(l)) ?? '';
    return Number(/counter packets (\d+)/.exec(rule)?.[1] ?? -1);
  }
  const save = (await sh('ebtables-save', ['-t', 'nat', '-c'])).stdout.split('\n').map((l) => /^\[(\d+):\d+\] (-A .*)$/.exec(l)).filter((m) => m !== null);
  const chain = save.map((m) => new RegExp(`^-A PREROUTING -i ${port} -j (\\S+)$`).exec(m[2]!)).find((m) => m)?.[1];
  const rule = save.find((m) => m[2]!.startsWith(`-A ${chain} `) && EBT[what].test(m[2]!));
  return rule ? Number(rule[1]) : -1;
}
const portOf = async (id: string): Promise<string> => {
  const list = JSON.parse((await cli(['list', '--json', '--state-dir', stateDir])).stdout) as { id: string; hostLink: string; mac: string }[];
  return list.find((x) => x.id === id)!.hostLink;
};

t.teardown(async () => {
  secret.close();
  await Promise.all([outside.stop(), blocked.stop()]);
  cleanup(work);
});

t.test('the legitimate paths work under the admin policy and the guards', async (t) => {
  t.equal(await wget('http://127.0.0.1:8080/'), 'hello from victim', 'published port via 127.0.0.1');
  t.equal(await wget('http://192.0.2.1:8080/'), 'hello from victim', 'published port via the host address');
  const fromOutside = await inNs(outside.sb.pid, ['timeout', '10', 'busybox', 'wget', '-qO-', 'http://192.0.2.1:8080/'], false);
  t.equal(fromOutside.stdout.trim(), 'hello from victim', `published port from another host${NFT ? '' : ' (FORWARD policy DROP)'}`);
  t.equal((await exec('neighbour', ['wget', '-qO-', 'http://192.0.2.1:8080/'])).stdout.trim(), 'hello from victim', 'hairpin from a neighbour');
  t.equal((await exec('victim', ['wget', '-qO-', 'http://10.213.0.1:8080/'])).stdout.trim(), 'hello from victim', 'hairpin to itself');
  t.equal((await exec('neighbour', ['wget', '-qO-', 'http://192.0.2.2:7000/'])).stdout.trim(), 'peer=192.0.2.1', 'outbound masquerade');
  t.equal((await exec('neighbour', ['ping', '-c1', '-W2', b.ip])).exitCode, 0, 'container to container');
  t.equal((await exec('attacker', ['ping', '-c1', '-W2', '10.213.0.1'])).exitCode, 0, 'the attacker reaches its gateway from its own address');
  t.equal((await exec('neighbour', ['wget', '-qO-', `http://${b.ip}:80/`])).stdout.trim(), 'hello from victim', 'container to container by address');
});

t.test('attack 1: a container cannot reach the host\'s 127.0.0.1-only services', async (t) => {
  t.equal((await sh('busybox', ['nc', '127.0.0.1', '9999'])).stdout.trim(), 'secret', 'the service answers the host itself');
  // Root in its netns: its own loopback gone, 127.0.0.1 routed via the gateway (its bundle allowed route_localnet).
  await exec('attacker', ['ip', 'addr', 'del', '127.0.0.1/8', 'dev', 'lo']);
  const route = await exec('attacker', ['ip', 'route', 'add', '127.0.0.1/32', 'via', '10.213.0.1']);
  t.equal(route.exitCode, 0, route.stderr);
  const got = await exec('attacker', ['nc', '-w', '3', '127.0.0.1', '9999']);
  t.notMatch(got.stdout, /secret/, 'the host service did not answer the container');
  if (NFT) {
    const inet = (await sh('nft', ['list', 'ruleset'])).stdout;
    t.match(inet, /chain input \{\n\s+type filter hook input priority filter; policy accept;\n\s+iifname @bridges ip daddr 127\.0\.0\.0\/8 ct state ! established,related ct status ! dnat drop/, 'the localhost guard (nftables)');
  }
  const input = (await sh('iptables-save', ['-t', 'filter'])).stdout;
  if (!NFT) t.match(input, /-A OCINET-INPUT -d 127\.0\.0\.0\/8 -i ocinet0 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -m comment --comment "?ocinet-net:[0-9a-f]{8}:ocinet0"? -j DROP/);
  if (!NFT) t.match(input, /^-A INPUT -m comment --comment ocinet -j OCINET-INPUT$/m, 'the guard is jumped to from INPUT');
  // Published ports through 127.0.0.1 still work from the host, and from the attacker via its gateway (DNAT).
  t.equal(await wget('http://127.0.0.1:8080/'), 'hello from victim');
  t.equal((await exec('attacker', ['wget', '-qO-', 'http://127.0.0.1:8080/'])).stdout.trim(), 'hello from victim', 'a published port via 127.0.0.1 from a container is DNAT, allowed');
  await exec('attacker', ['ip', 'route', 'del', '127.0.0.1/32']);
  await exec('attacker', ['ip', 'addr', 'add', '127.0.0.1/8', 'dev', 'lo']);
});

t.test('attack 2: a container\'s router advertisement changes neither the host nor its neighbours', async (t) => {
  const port = await portOf('attacker');
  const before = await guardCount(port, 'ra');
  const sent = await exec('attacker', ['l2-send', 'ra', 'eth0', '2001:db8:1::']);
  t.equal(sent.exitCode, 0, sent.stderr);
  await sleep(1000);
  t.equal(await hostRoutes6(), '', 'the host has no IPv6 default route');
  t.equal((await sh('ip', ['-6', 'addr', 'show', 'dev', 'ocinet0', 'scope', 'global'])).stdout.trim(), '', 'no global address on the bridge');
  const n = await exec('neighbour', ['ip', '-6', 'route', 'show']);
  t.notMatch(n.stdout, /default|2001:db8/, 'the neighbour got no route from it');
  t.equal(await guardCount(port, 'ra'), before + 1, "the RA was sent, and dropped at the attacker's port");
  const sys = (k: string): string => readFileSync(`/proc/sys/net/ipv6/conf/${k}`, 'utf8').trim();
  t.same([sys('ocinet0/accept_ra'), sys('ocinet0/autoconf'), sys('ocinet0/disable_ipv6')], ['0', '0', '1'], 'bridge: no RA, no autoconf, no IPv6 (the network has none)');
  t.same([sys(`${port}/accept_ra`), sys(`${port}/autoconf`), sys(`${port}/disable_ipv6`)], ['0', '0', '1'], 'host veth: the same');
});

// Each backend's own attack 3: iptables' FORWARD layout, or nftables' separate tables.
if (!NFT) t.test("attack 3: the admin's FORWARD policy applies to containers", async (t) => {
  const fwd = (await sh('iptables', ['-S', 'FORWARD'])).stdout.trim().split('\n');
  t.same(fwd.slice(1).map((l) => l.replace(/ -m comment --comment ocinet/, '')), [
    '-A FORWARD -j OCINET-USER',
    '-A FORWARD -d 198.51.100.0/24 -j DROP',
    '-A FORWARD -j OCINET-FORWARD',
  ], "FORWARD: the admin's chain first, the admin's rule, then ocinet's accepts");
  // (busybox wget -T crashes: the negative checks ping, bounded by -W.)
  const ping = async (to: string): Promise<number> => (await exec('neighbour', ['ping', '-c1', '-W2', to])).exitCode;
  t.not(await ping('198.51.100.2'), 0, "the admin's DROP holds for containers");
  // Without the admin's rule that network is reachable: the DROP above is what stopped it.
  await sh('iptables', ['-D', 'FORWARD', '-d', '198.51.100.0/24', '-j', 'DROP']);
  t.equal((await exec('neighbour', ['wget', '-qO-', 'http://198.51.100.2:7000/'])).stdout.trim(), 'peer=198.51.100.1', 'reachable without the rule');
  await sh('iptables', ['-I', 'FORWARD', '2', '-d', '198.51.100.0/24', '-j', 'DROP']);
  t.equal((await exec('neighbour', ['wget', '-qO-', 'http://192.0.2.2:7000/'])).stdout.trim(), 'peer=192.0.2.1', 'elsewhere is allowed (policy DROP, ocinet accepts)');
  // A rule the admin adds while containers run goes into OCINET-USER, and wins over ocinet's accepts.
  await sh('iptables', ['-A', 'OCINET-USER', '-d', '192.0.2.0/24', '-j', 'REJECT']);
  t.not(await ping('192.0.2.2'), 0, 'OCINET-USER is evaluated before ocinet');
  await sh('iptables', ['-D', 'OCINET-USER', '-d', '192.0.2.0/24', '-j', 'REJECT']);
  t.equal((await exec('neighbour', ['wget', '-qO-', 'http://192.0.2.2:7000/'])).stdout.trim(), 'peer=192.0.2.1', 'and allowed again once removed');
});

if (NFT) t.test("attack 3 (nftables): the admin's drops apply, in iptables and in a table of their own", async (t) => {
  const ping = async (to: string): Promise<number> => (await exec('neighbour', ['ping', '-c1', '-W2', to])).exitCode;
  t.not(await ping('198.51.100.2'), 0, "the admin's iptables DROP holds for containers");
  await sh('iptables', ['-D', 'FORWARD', '-d', '198.51.100.0/24', '-j', 'DROP']);
  t.equal(await ping('198.51.100.2'), 0, 'reachable without it');
  await sh('iptables', ['-A', 'FORWARD', '-d', '198.51.100.0/24', '-j', 'DROP']);
  await sh('nft', ['-f', '-'], { input: 'table inet admin {\n chain admin_forward {\n  type filter hook forward priority 10; policy accept;\n  ip daddr 192.0.2.0/24 drop\n }\n}\n' });
  t.not(await ping('192.0.2.2'), 0, "a drop in the admin's own nftables table, after ocinet's priority, holds");
  await sh('nft', ['delete', 'table', 'inet', 'admin']);
  t.equal(await ping('192.0.2.2'), 0, 'and allowed again once removed');
});

t.test("attack 4: a container cannot take its neighbour's address or MAC", async (t) => {
  t.equal((await sh('busybox', ['ping', '-c1', '-W2', b.ip], { reject: false })).exitCode, 0, 'the host knows the victim');
  const neigh = async (): Promise<string> => (await sh('ip', ['neigh', 'show', b.ip, 'dev', 'ocinet0'])).stdout;
  t.match(await neigh(), b.mac);
  t.equal(JSON.parse((await cli(['list', '--json', '--state-dir', stateDir])).stdout).find((x: { id: string }) => x.id === 'victim').mac, b.mac, "the record holds the victim's MAC");
  await exec('attacker', ['ip', 'addr', 'add', `${b.ip}/32`, 'dev', 'eth0']);
  await exec('attacker', ['busybox', 'arping', '-U', '-c', '2', '-I', 'eth0', '-s', b.ip, b.ip]);
  await exec('attacker', ['busybox', 'arping', '-A', '-c', '2', '-I', 'eth0', '-s', b.ip, b.ip]);
  const spoofedPing = await exec('attacker', ['ping', '-c1', '-W2', '-I', b.ip, '10.213.0.1']);
  t.not(spoofedPing.exitCode, 0, "the attacker's packets from the victim's address are dropped");
  t.notMatch(await neigh(), a.mac, "the host's neighbour entry did not move to the attacker");
  t.equal(await wget('http://127.0.0.1:8080/'), 'hello from victim', "the victim's published port is still served by the victim");
  const port = await portOf('attacker');
  t.ok((await guardCount(port, 'arp')) > 0, "the gratuitous ARPs were dropped at the attacker's port");
  await exec('attacker', ['ip', 'addr', 'del', `${b.ip}/32`, 'dev', 'eth0']);

  // Another MAC: the attacker's port passes nothing from it.
  await exec('attacker', ['ip', 'link', 'set', 'eth0', 'address', b.mac]);
  t.not((await exec('attacker', ['ping', '-c1', '-W2', '10.213.0.1'])).exitCode, 0, "frames from the victim's MAC are dropped");
  await exec('attacker', ['ip', 'link', 'set', 'eth0', 'address', a.mac]);
  t.equal((await exec('attacker', ['ping', '-c1', '-W2', '10.213.0.1'])).exitCode, 0, 'its own MAC passes again');

  // Other ethertypes (a VLAN tag could carry anything) do not pass.
  const before = await guardCount(port, 'other');
  for (const type of ['8100', '88b5']) t.equal((await exec('attacker', ['l2-send', 'ether', 'eth0', type])).exitCode, 0);
  t.equal(await guardCount(port, 'other'), before + 2, 'a VLAN-tagged and an experimental ethertype frame hit the last DROP');
});

t.test('--allow-spoofing: the admin lets a network through; router advertisements stay dropped', async (t) => {
  const a2 = await container(spoofRc, 'sp-attacker', { attacker: true });
  const b2 = await container(spoofRc, 'sp-victim');
  t.equal((await sh('busybox', ['ping', '-c1', '-W2', b2.ip], { reject: false })).exitCode, 0);
  await spoofRc.exec('sp-attacker', ['ip', 'addr', 'add', `${b2.ip}/32`, 'dev', 'eth0']);
  await spoofRc.exec('sp-attacker', ['busybox', 'arping', '-U', '-c', '2', '-I', 'eth0', '-s', b2.ip, b2.ip]);
  const neigh = (await sh('ip', ['neigh', 'show', b2.ip, 'dev', 'ocsp0'])).stdout;
  t.match(neigh, a2.mac, 'with spoofing allowed, the gratuitous ARP moves the entry (what the guard prevents)');
  const sent = await spoofRc.exec('sp-attacker', ['l2-send', 'ra', 'eth0', '2001:db8:2::']);
  t.equal(sent.exitCode, 0, sent.stderr);
  await sleep(1000);
  t.equal(await hostRoutes6(), '', 'still no IPv6 route from a container');
  await spoofRc.stop('sp-attacker');
  await spoofRc.stop('sp-victim');
});

t.test('teardown takes the guards, the localhost guard and the chains; the admin policy stays', async (t) => {
  await rc.stop('attacker');
  await rc.stop('victim');
  await rc.stop('neighbour');
  t.equal(await snapshot(stateDir), baseline, 'no links, rules, guards or leases left');
  t.match((await sh('iptables', ['-S', 'FORWARD'])).stdout, new RegExp(`-P FORWARD ${NFT ? 'ACCEPT' : 'DROP'}\\n-A FORWARD -d 198\\.51\\.100\\.0/24 -j DROP\\n?$`));
});

if (!NFT) t.test("the previous version's FORWARD jump (inserted first) moves after the admin's rules", async (t) => {
  await sh('iptables-restore', ['--noflush'], {
    input: '*filter\n:OCINET-FORWARD - [0:0]\n-I FORWARD -m comment --comment ocinet -j OCINET-FORWARD\nCOMMIT\n',
  });
  const r = new Runc(work, join(work, 'runc-mig'), hookArgs('--subnet', '10.213.0.0/24'));
  await container(r, 'mig');
  const fwd = (await sh('iptables', ['-S', 'FORWARD'])).stdout.trim().split('\n').slice(1);
  t.same(fwd.map((l) => l.replace(/ -m comment --comment ocinet/, '')), ['-A FORWARD -j OCINET-USER', '-A FORWARD -d 198.51.100.0/24 -j DROP', '-A FORWARD -j OCINET-FORWARD']);
  t.not((await r.exec('mig', ['ping', '-c1', '-W2', '198.51.100.2'])).exitCode, 0, "the admin's DROP holds");
  t.equal((await r.exec('mig', ['ping', '-c1', '-W2', '192.0.2.2'])).exitCode, 0, 'elsewhere is allowed');
  await r.stop('mig');
  t.equal(await snapshot(stateDir), baseline);
});
