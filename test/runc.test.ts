// End to end with real runc: busybox-static bundles whose hooks run the built
// ocinet-hook with "env": []. Two containers, an outside host, published
// ports from outside / localhost / hairpin, and nothing left after delete.
import t from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { cli, inNs, outsideAndBaseline, ROOT, sh, snapshot, tempDir } from './lib/env.js';
import { Runc } from './lib/runc.js';

const work = tempDir('runc');
const stateDir = join(work, 'state');
const runcRoot = join(work, 'runc');
// The real entry point: the hook as `make install` puts it (a symlink into PREFIX/lib/ocinet).
const prefix = join(work, 'prefix');
execFileSync('make', ['-s', '-C', ROOT, 'install', `PREFIX=${prefix}`], { stdio: 'ignore' });
const INSTALLED_HOOK = join(prefix, 'bin/ocinet-hook');
// Once per backend: nftables here, iptables through runc-iptables.test.ts.
const FIREWALL = process.env.OCINET_TEST_FIREWALL ?? 'nftables';
const HOOK_ARGS = [INSTALLED_HOOK, '--state-dir', stateDir, '--subnet', '10.213.0.0/24', '--firewall', FIREWALL];

const rc = new Runc(work, runcRoot, HOOK_ARGS.slice(1), INSTALLED_HOOK);
const bundle = (name: string, env: Record<string, string> = {}, edit?: string) => rc.bundle(name, env, edit);
const runc = (args: string[], reject = true) => rc.run(args, reject);
const exec = (id: string, args: string[]) => rc.exec(id, args);
const start = (id: string, dir: string) => rc.start(id, dir);
const stop = (id: string) => rc.stop(id);

// The outside host: its own namespace, joined to ours by a veth; it answers
// HTTP with the peer address it sees.
const { outside, baseline } = await outsideAndBaseline(t, work);

t.test('two runc containers: addresses, ping, NAT, published ports, clean delete', async (t) => {
  const a = await bundle('ctr-a', { OCINET_ANNOTATIONS: JSON.stringify({ 'io.ocinet.publish': '8080:80' }) });
  const b = await bundle('ctr-b', { OCINET_SETUP_STAGE: 'createRuntime' });
  const ra = await start('a', a);
  t.equal(ra.exitCode, 0, ra.stderr);
  const rb = await start('b', b);
  t.equal(rb.exitCode, 0, rb.stderr);

  const list = JSON.parse((await cli(['list', '--json', '--state-dir', stateDir])).stdout) as { id: string; ip: string; ports: string[] }[];
  const ip = (id: string): string => list.find((c) => c.id === id)!.ip.split('/')[0]!;
  t.same(list.map((c) => c.id).sort(), ['a', 'b']);
  t.not(ip('a'), ip('b'), 'distinct addresses');
  t.same(list.find((c) => c.id === 'a')!.ports, ['8080:80/tcp']);
  const nftTables = (await sh('nft', ['list', 'tables'])).stdout;
  const ipt = (await sh('iptables-save', ['-t', 'nat'])).stdout;
  if (FIREWALL === 'nftables') {
    t.match(nftTables, /table inet ocinet-[0-9a-f]{8}\ntable bridge ocinet-[0-9a-f]{8}/, 'the nftables backend: its own tables');
    t.notMatch(ipt, /OCINET/, 'and no iptables chains');
  } else {
    t.match(ipt, /:OCINET-DNAT/, 'the iptables backend: its chains');
    t.notMatch(nftTables, /ocinet-/, 'and no nftables tables');
  }

  t.equal((await exec('a', ['ping', '-c1', '-W2', ip('b')])).exitCode, 0, 'a pings b');
  t.equal((await exec('b', ['ping', '-c1', '-W2', ip('a')])).exitCode, 0, 'b pings a');
  t.equal((await exec('a', ['ping', '-c1', '-W2', '10.213.0.1'])).exitCode, 0, 'a pings the gateway');
  t.equal((await exec('b', ['ping', '-c1', '-W2', '10.213.0.1'])).exitCode, 0, 'b pings the gateway');

  const out = await exec('a', ['wget', '-qO-', 'http://192.0.2.2:7000/']);
  t.equal(out.stdout, 'peer=192.0.2.1', 'outside host sees the host address (MASQUERADE)');

  const fromOutside = await inNs(outside.sb.pid, ['timeout', '10', 'busybox', 'wget', '-qO-', 'http://192.0.2.1:8080/'], false);
  t.equal(fromOutside.stdout.trim(), 'hello from ctr-a', 'published port from another host');
  const fromHost = await sh('timeout', ['10', 'busybox', 'wget', '-qO-', 'http://127.0.0.1:8080/'], { reject: false });
  t.equal(fromHost.stdout.trim(), 'hello from ctr-a', 'published port via 127.0.0.1 on the host');
  const viaGw = await sh('timeout', ['10', 'busybox', 'wget', '-qO-', 'http://10.213.0.1:8080/'], { reject: false });
  t.equal(viaGw.stdout.trim(), 'hello from ctr-a', 'published port via the bridge address on the host');
  const hairpin = await exec('b', ['wget', '-qO-', 'http://192.0.2.1:8080/']);
  t.equal(hairpin.stdout.trim(), 'hello from ctr-a', 'hairpin: the other container via the host address');
  const self = await exec('a', ['wget', '-qO-', 'http://10.213.0.1:8080/']);
  t.equal(self.stdout.trim(), 'hello from ctr-a', 'hairpin: a container reaching its own published port');

  await stop('a');
  await stop('b');
  t.equal((await runc(['list', '-q'])).stdout.trim(), '', 'runc has no containers');
  t.equal(await snapshot(stateDir), baseline, 'no links, rules or leases left after runc delete');
});

t.test('a failing hook aborts the start with its message and leaves nothing', async (t) => {
  const bad = await bundle('ctr-bad', { OCINET_ANNOTATIONS: JSON.stringify({ 'io.ocinet.ip': '10.9.9.9' }) });
  const r = await start('bad', bad);
  t.not(r.exitCode, 0);
  t.match(r.stderr, /static address 10\.9\.9\.9 is outside subnet 10\.213\.0\.0\/24/, "runc relays the hook's reason");
  await runc(['delete', '--force', 'bad'], false);
  t.equal(await snapshot(stateDir), baseline);
});

t.test('namespace sharing through config.json "path"', async (t) => {
  const a = await bundle('owner');
  t.equal((await start('owner', a)).exitCode, 0);
  const pid = JSON.parse((await runc(['state', 'owner'])).stdout).pid as number;
  // The joiner's httpd would clash on port 80: give it another process.
  const b = await bundle('joiner', { OCINET_NETNS_PATH: `/proc/${pid}/ns/net` }, '.process.args = ["sleep", "3600"]');
  const rb = await start('joiner', b);
  t.equal(rb.exitCode, 0, rb.stderr);
  const ipA = (await exec('owner', ['ip', '-4', '-o', 'addr', 'show', 'eth0'])).stdout;
  const ipB = (await exec('joiner', ['ip', '-4', '-o', 'addr', 'show', 'eth0'])).stdout;
  t.match(ipA, /inet 10\.213\.0\.\d+\/24/);
  t.equal(ipB, ipA, 'the joiner sees the same eth0 and address');
  t.equal((await exec('joiner', ['wget', '-qO-', 'http://127.0.0.1:80/'])).stdout.trim(), 'hello from owner', 'shared localhost');
  await stop('joiner');
  t.equal((await exec('owner', ['ping', '-c1', '-W2', '10.213.0.1'])).exitCode, 0, "joiner's teardown left the owner's network");
  await stop('owner');
  t.equal(await snapshot(stateDir), baseline);
});
