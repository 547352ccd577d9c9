// Real runtimes' failure paths: podman 4.3 loading the built ocinet-hook from
// a hooks.d directory (prestart + poststop), and runc alone, each starting a
// container whose command does not exist.
//
// What the runtimes do (observed here, podman 4.3.1 + runc 1.1.5):
// - podman keeps poststop hooks for itself and runs them when the container
//   exits (conmon's `podman container cleanup`) or at `podman rm`, whichever
//   comes first (state without pid). When the start fails after prestart ran (`/nonexistent`),
//   `podman run` exits 127 and the container stays "Created"; `podman rm` of
//   it runs NO poststop. The prestart's record (its lease, its published
//   port, the dead namespace's inode) stays behind, and the kernel hands that
//   inode to the next new namespace at once.
// - `runc run -d` alone exits 1 and does run poststop after the same failure.
// The fixed behaviour asserted here: the dead record does not block the next
// container (same port, reused inode): that one gets a network of its own.
import t, { type Test } from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { join } from 'node:path';
import { cleanup, cli, HOOK, readDb, sh, snapshot, tempDir, type HookRun } from './lib/env.js';
import { hookLog, Podman, unmountUnder, type HookLogLine } from './lib/podman.js';
import { Runc } from './lib/runc.js';

const work = tempDir('podman');
const stateDir = join(work, 'state');
const SUBNET = '10.213.0.0/24';
const GATEWAY = '10.213.0.1';
const HOOK_ARGS = ['--state-dir', stateDir, '--subnet', SUBNET];
const pm = await Podman.boot(work, HOOK_ARGS);
const baseline = await snapshot();

t.teardown(async () => {
  await pm.rmAll();
  await cli(['gc', '--state-dir', stateDir]);
  await unmountUnder(work);
  cleanup(work);
});

interface ListRow {
  id: string;
  mode: string;
  ip: string;
  ports: string[];
  alive: boolean;
  sharedWith?: string;
}

async function list(): Promise<ListRow[]> {
  const r = await cli(['list', '--json', '--state-dir', stateDir]);
  if (r.exitCode !== 0) throw new Error(`ocinet list: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as ListRow[];
}

/** HTTP from the test's namespace (the host side), bounded. */
async function get(url: string): Promise<string> {
  return (await sh('timeout', ['10', 'busybox', 'wget', '-qO-', url], { reject: false })).stdout.trim();
}

/** eth0's IPv4 address/prefix inside a container, or '' when it has none. */
async function eth0(name: string): Promise<string> {
  const r = await pm.exec(name, ['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0']);
  return /inet (\d+\.\d+\.\d+\.\d+\/\d+)/.exec(r.stdout)?.[1] ?? '';
}

const inSubnet = /^10\.213\.0\.(\d+)\/24$/;
const logOf = (id: string): HookLogLine[] => hookLog(stateDir).filter((l) => l.id === id);
const describe = (lines: HookLogLine[]): string =>
  lines.length ? lines.map((l) => `${l.op} ${l.ok ? 'ok' : `failed (${l.error})`}`).join(', ') : 'no hook run';
const firstLine = (r: HookRun): string => r.stderr.trim().split('\n')[0] ?? '';

/** `podman run` of a command that does not exist, publishing `port`; says what podman and the hook did. */
async function failedStart(t: Test, name: string, port: number): Promise<string> {
  const r = await pm.run(name, { annotations: { 'io.ocinet.publish': `${port}:80` }, cmd: ['/nonexistent'] });
  t.not(r.exitCode, 0, `podman run ${name} fails`);
  t.match(r.stderr, /nonexistent/, 'podman names the missing command');
  const id = await pm.id(name);
  t.comment(`podman run (/nonexistent): exit ${r.exitCode}; stderr: ${firstLine(r)}`);
  t.comment(`podman state after the failure: ${await pm.inspect(name, '{{.State.Status}}')}; hook runs: ${describe(logOf(id))}`);
  return id;
}

/**
 * A new container publishing `port` after a failed start: it must start and
 * get its own eth0 (not be taken for a sharer of the dead one's namespace),
 * reach its gateway, and answer on 127.0.0.1:port. Returns whether it started.
 */
async function worksAfterFailure(t: Test, name: string, port: number, deadId: string): Promise<boolean> {
  const dead = readDb(stateDir).containers[deadId] as { netns?: string } | undefined;
  const deadNetns = dead?.netns;
  const r = await pm.run(name, { annotations: { 'io.ocinet.publish': `${port}:80` } });
  t.equal(r.exitCode, 0, `a new container publishing ${port} starts (${firstLine(r) || 'ok'})`);
  if (r.exitCode !== 0) {
    t.comment(`podman run ${name}: exit ${r.exitCode}; hook runs: ${describe(logOf(await pm.id(name)))}`);
    return false;
  }
  const id = r.stdout.trim();
  if (deadNetns) {
    const pid = await pm.pid(name);
    const ino = (await sh('stat', ['-L', '-c', '%i', `/proc/${pid}/ns/net`])).stdout.trim();
    t.comment(`dead record's netns ${deadNetns}; the new container's netns inode ${ino}${deadNetns.endsWith(`:${ino}`) ? ' (reused)' : ''}`);
  }
  t.match(await eth0(name), inSubnet, `${name} has its own eth0 with an address in ${SUBNET}`);
  t.equal((await pm.exec(name, ['ping', '-c1', '-W2', GATEWAY])).exitCode, 0, `${name} pings the gateway`);
  t.equal(await get(`http://127.0.0.1:${port}/`), `hello from ${name}`, `port ${port} answers from ${name} via 127.0.0.1`);
  const row = (await list()).find((c) => c.id === id);
  t.ok(row && row.mode === 'veth' && !row.sharedWith, `ocinet lists ${name} with a network of its own`);
  t.same(row?.ports, [`${port}:80/tcp`], `${name} holds port ${port}`);
  return true;
}

t.test('podman: published port, fixed address, hairpin, list, nothing left after rm', async (t) => {
  t.teardown(() => pm.rm('web-a', 'web-b').then(() => undefined));
  const ra = await pm.run('web-a', { annotations: { 'io.ocinet.publish': '8080:80' } });
  t.equal(ra.exitCode, 0, `podman run web-a: ${firstLine(ra) || 'ok'}`);
  const rb = await pm.run('web-b', { annotations: { 'io.ocinet.ip': '10.213.0.50' } });
  t.equal(rb.exitCode, 0, `podman run web-b: ${firstLine(rb) || 'ok'}`);
  const idA = ra.stdout.trim();
  const idB = rb.stdout.trim();

  const addrA = await eth0('web-a');
  t.match(addrA, inSubnet, 'web-a: eth0 has an address in the subnet');
  const routes = (await pm.exec('web-a', ['ip', 'route'])).stdout;
  t.match(routes, new RegExp(`^default via ${GATEWAY.replace(/\./g, '\\.')} dev eth0`, 'm'), 'web-a: default route via the gateway');
  t.equal(await eth0('web-b'), '10.213.0.50/24', 'web-b: exactly the address of io.ocinet.ip');

  t.equal(await get('http://127.0.0.1:8080/'), 'hello from web-a', 'published port via 127.0.0.1');
  t.equal(await get(`http://${GATEWAY}:8080/`), 'hello from web-a', 'published port via the bridge address');
  const self = await pm.exec('web-a', ['wget', '-qO-', `http://${GATEWAY}:8080/`]);
  t.equal(self.stdout.trim(), 'hello from web-a', 'hairpin: web-a reaches its own published port');
  t.equal((await pm.exec('web-b', ['ping', '-c1', '-W2', addrA.split('/')[0]!])).exitCode, 0, 'web-b pings web-a');

  const rows = await list();
  t.same(rows.map((c) => c.id).sort(), [idA, idB].sort(), 'ocinet list shows both, by podman id');
  const a = rows.find((c) => c.id === idA);
  const b = rows.find((c) => c.id === idB);
  t.same(a?.ports, ['8080:80/tcp'], 'web-a holds port 8080');
  t.equal(a?.ip, addrA, 'list: the address web-a has');
  t.equal(b?.ip, '10.213.0.50/24', 'list: the fixed address of web-b');
  t.ok(a?.alive && b?.alive, 'both alive');

  const rm = await pm.rm('web-a', 'web-b');
  t.equal(rm.exitCode, 0, `podman rm: ${rm.stderr.trim() || 'ok'}`);
  t.same(await pm.names(), [], 'podman has no containers');
  for (const [name, id] of [['web-a', idA], ['web-b', idB]] as const) {
    // podman rm stops both, then runs each poststop: the first teardown may find the other
    // already dead on the bridge and reclaim it (so the bridge can go); its own poststop then finds nothing.
    const ops = logOf(id).map((l) => `${l.op}:${l.ok}`);
    t.equal(ops[0], 'setup:true', `${name}: prestart set up`);
    t.ok(ops.includes('teardown:true'), `${name}: podman rm ran poststop`);
    t.same(ops.filter((o) => !['setup:true', 'teardown:true', 'reclaim:true'].includes(o)), [], `${name}: nothing failed`);
  }
  t.same(await list(), [], 'ocinet has no containers');
  t.not((await sh('ip', ['link', 'show', 'ocinet0'], { reject: false })).exitCode, 0, 'bridge removed with the last container');
  t.equal(await snapshot(stateDir), baseline, 'no links, rules or leases left');
});

t.test('podman: a failed start does not block the next container on the same port', async (t) => {
  t.teardown(async () => {
    await pm.rm('bad-1', 'after-1');
    await cli(['gc', '--state-dir', stateDir]); // the next test starts clean even when this one failed
  });
  const deadId = await failedStart(t, 'bad-1', 8081);
  const started = await worksAfterFailure(t, 'after-1', 8081, deadId);

  const rm = await pm.rm('bad-1');
  t.equal(rm.exitCode, 0, `podman rm of the failed container: ${rm.stderr.trim() || 'ok'}`);
  t.comment(`after podman rm of the failed container, hook runs for it: ${describe(logOf(deadId))}`);
  if (started) {
    t.equal(await get('http://127.0.0.1:8081/'), 'hello from after-1', 'removing the failed container leaves the new one alone');
    t.equal((await pm.exec('after-1', ['ping', '-c1', '-W2', GATEWAY])).exitCode, 0, 'after-1 still reaches the gateway');
  }
  t.equal((await pm.rm('after-1')).exitCode, 0, 'podman rm after-1');
  t.equal(await snapshot(stateDir), baseline, 'nothing left after both are removed (no gc)');
});

t.test('podman: three rounds of failed start + new container on one port, then nothing left after gc', async (t) => {
  t.teardown(() => pm.rmAll().then(() => undefined));
  for (let round = 1; round <= 3; round++) {
    const bad = `bad-r${round}`;
    const good = `new-r${round}`;
    const deadId = await failedStart(t, bad, 8082);
    await worksAfterFailure(t, good, 8082, deadId);
    const rm = await pm.rm(bad, good);
    t.equal(rm.exitCode, 0, `round ${round}: both removed`);
    t.comment(`round ${round}: hook runs for ${bad} after podman rm: ${describe(logOf(deadId))}`);
  }
  t.same(await pm.names(), [], 'podman has no containers');
  const gc = await cli(['gc', '--json', '--state-dir', stateDir]);
  t.equal(gc.exitCode, 0, `ocinet gc: ${gc.stderr.trim() || 'ok'}`);
  t.comment(`ocinet gc: ${JSON.stringify(JSON.parse(gc.stdout || '{}'))}`);
  t.equal(await snapshot(stateDir), baseline, 'nothing left: no links, rules or leases');
});

t.test('runc alone: a failed start runs poststop and leaves nothing; the port is free again', async (t) => {
  const rc = new Runc(join(work, 'runc-bundles'), join(work, 'runc-root'), HOOK_ARGS, HOOK);
  t.teardown(async () => {
    await rc.stop('runc-bad');
    await rc.stop('runc-good');
  });
  const ann = { OCINET_ANNOTATIONS: JSON.stringify({ 'io.ocinet.publish': '8083:80' }) };
  const bad = await rc.bundle('runc-bad', ann, '.process.args = ["/nonexistent"]');
  const r = await rc.start('runc-bad', bad);
  t.not(r.exitCode, 0, 'runc run -d fails');
  t.match(r.stderr, /nonexistent/, 'runc names the missing command');
  t.comment(`runc run -d (/nonexistent): exit ${r.exitCode}; stderr: ${r.stderr.trim().split('\n')[0] ?? ''}`);
  t.comment(`hook runs: ${describe(logOf('runc-bad'))}`);
  t.equal((await rc.run(['list', '-q'])).stdout.trim(), '', 'runc keeps no container');
  t.equal(await snapshot(stateDir), baseline, 'nothing left after the failed start');

  const good = await rc.bundle('runc-good', ann);
  const rg = await rc.start('runc-good', good);
  t.equal(rg.exitCode, 0, `runc run -d runc-good: ${rg.stderr.trim() || 'ok'}`);
  const addr = await rc.exec('runc-good', ['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0']);
  t.match(addr.stdout, /inet 10\.213\.0\.\d+\/24/, 'the new container has eth0 in the subnet');
  t.equal(await get('http://127.0.0.1:8083/'), 'hello from runc-good', 'port 8083 answers from the new container');
  await rc.stop('runc-good');
  t.equal(await snapshot(stateDir), baseline, 'nothing left after runc delete');
});
