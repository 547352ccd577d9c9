// What real runtimes do to a hook besides the happy path: containers that die
// without a poststop, network namespace inodes and pids the kernel hands out
// again, the same id under two runtimes, odd ids, and a damaged state file.
// Dead records must never decide; teardown takes only what is its own.
import t from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { acquire } from '../core/state/lock.js';
import { dnatChain, hostVethName, stateId } from '../core/state/names.js';
import { cleanup, cli, hook, HOOK, inNs, readDb, sandbox, sh, sleep, snapshot, state, tempDir, type Sandbox } from './lib/env.js';
import { Runc } from './lib/runc.js';

const nsInode = (pid: number): number => statSync(`/proc/${pid}/ns/net`).ino;
const logOps = (dir: string): { op: string; id?: string; by?: string; why?: string; warning?: string; skipped?: string }[] =>
  readFileSync(join(dir, 'ocinet.log'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
const natRules = async (): Promise<string> => (await sh('iptables-save', ['-t', 'nat'])).stdout;
const pingGw = async (pid: number, gw: string): Promise<number> => (await inNs(pid, ['busybox', 'ping', '-c1', '-W2', gw], false)).exitCode;
const eth0Addr = async (pid: number): Promise<string> => (await inNs(pid, ['ip', '-4', '-o', 'addr', 'show', 'eth0'], false)).stdout;

/** A web server in a sandbox's namespace, answering with `text`. */
function serve(sb: Sandbox, dir: string, text: string): () => void {
  writeFileSync(join(dir, 'index.html'), text);
  const p = spawn('nsenter', [`--net=/proc/${sb.pid}/ns/net`, '--', 'busybox', 'httpd', '-f', '-p', '80', '-h', dir], { stdio: 'ignore' });
  return () => p.kill('SIGKILL');
}
// (busybox wget -T crashes on these machines)
const get = async (url: string): Promise<string> => {
  try {
    return await (await fetch(url, { signal: AbortSignal.timeout(3000) })).text();
  } catch (e) {
    return `failed: ${(e as Error).message}`;
  }
};

t.test('a dead container whose netns inode comes back: the new one gets its own eth0', async (t) => {
  const dir = tempDir('inode');
  const args = ['--state-dir', dir, '--subnet', '10.220.0.0/24', '--bridge', 'ocinode0'];
  const before = await snapshot(dir);
  const a = await sandbox();
  const inodeA = nsInode(a.pid);
  const up = await hook(args, state('a', 'creating', a.pid, { annotations: { 'io.ocinet.publish': '8181:80' } }));
  t.equal(up.exitCode, 0, up.stderr);
  await a.kill(); // no poststop: a failed start, a killed runtime
  // The kernel frees a namespace in a worker, later under load: its veth going tells it is done.
  for (let i = 0; i < 250 && (await sh('ip', ['link', 'show', hostVethName('a', stateId(dir))], { reject: false })).exitCode === 0; i++) await sleep(20);
  let b = await sandbox();
  for (let i = 0; i < 30 && nsInode(b.pid) !== inodeA; i++) {
    await b.kill();
    await sleep(50);
    b = await sandbox();
  }
  // Test files run side by side: another one's new namespace may take the freed inode first.
  const reused = nsInode(b.pid) === inodeA;
  if (!reused) t.comment('the kernel gave the freed inode to another namespace: the reclaim checks are skipped this time');
  // No ports of its own: nothing but the namespace check can tell it from a sharer.
  const r = await hook(args, state('b', 'creating', b.pid));
  t.equal(r.exitCode, 0, r.stderr);
  const res = JSON.parse(r.stdout) as { ip: string; sharedWith?: string };
  t.equal(res.sharedWith, undefined, 'not taken for a sharer of the dead one');
  t.match(await eth0Addr(b.pid), new RegExp(`inet ${res.ip.replace(/\./g, '\\.')}/24`), 'b has its own eth0 with its address');
  t.equal(await pingGw(b.pid, '10.220.0.1'), 0, 'b reaches its gateway');
  if (reused) {
    t.same(Object.keys(readDb(dir).containers), ['b'], 'the dead record is gone');
    const reclaim = logOps(dir).find((e) => e.op === 'reclaim' && e.id === 'a');
    t.ok(reclaim, 'the reclaim is logged');
    t.equal(reclaim?.by, 'b');
    t.notOk((await natRules()).includes(dnatChain('a', stateId(dir))), "a's ports chain is gone");
  } else {
    t.equal((await cli(['gc', '--state-dir', dir])).exitCode, 0, 'gc reclaims the dead record instead');
  }
  t.equal((await hook(args, state('b', 'stopped'))).exitCode, 0);
  t.equal(await snapshot(dir), before, 'nothing left');
  await b.kill();
  cleanup(dir);
});

t.test("a dead owner's published port goes to the new container that asks for it", async (t) => {
  const dir = tempDir('port');
  const args = ['--state-dir', dir, '--subnet', '10.221.0.0/24', '--bridge', 'ocport0'];
  const resident = await sandbox(); // keeps the bridge, so b's veth is made early
  t.equal((await hook(args, state('resident', 'creating', resident.pid))).exitCode, 0);
  const a = await sandbox();
  t.equal((await hook(args, state('a', 'creating', a.pid, { annotations: { 'io.ocinet.publish': '8282:80' } }))).exitCode, 0);
  const live = await sandbox();
  const taken = await hook(args, state('other', 'creating', live.pid, { annotations: { 'io.ocinet.publish': '8282:80' } }));
  t.not(taken.exitCode, 0, 'while a lives, its port is refused');
  t.match(taken.stderr, /host port 8282\/tcp is already published by container a/);
  await a.kill();
  const b = await sandbox();
  const stop = serve(b, tempDir('www'), 'from b');
  const r = await hook(args, state('b', 'creating', b.pid, { annotations: { 'io.ocinet.publish': '8282:80' } }));
  t.equal(r.exitCode, 0, r.stderr);
  await sleep(200);
  t.equal(await get('http://127.0.0.1:8282/'), 'from b', 'the port answers from the new container');
  t.notOk((await natRules()).includes(dnatChain('a', stateId(dir))), "a's rules are gone");
  t.same(Object.keys(readDb(dir).containers).sort(), ['b', 'resident']);
  stop();
  for (const id of ['b', 'resident']) t.equal((await hook(args, state(id, 'stopped'))).exitCode, 0);
  await Promise.all([b.kill(), live.kill(), resident.kill()]);
  cleanup(dir);
});

t.test('a pool full of dead leases still gives an address; a static address held by a dead one too', async (t) => {
  const dir = tempDir('pool');
  const args = ['--state-dir', dir, '--subnet', '10.222.0.0/29', '--bridge', 'ocpool1']; // 5 addresses
  const before = await snapshot(dir);
  const sbs = await Promise.all([...Array(5)].map(() => sandbox()));
  for (let i = 0; i < 5; i++) t.equal((await hook(args, state(`d${i}`, 'creating', sbs[i]!.pid))).exitCode, 0);
  const extra = await sandbox();
  t.match((await hook(args, state('x', 'creating', extra.pid))).stderr, /no free address left/, 'full while they live');
  await Promise.all(sbs.slice(0, 4).map((s) => s.kill())); // d4 lives on
  const r = await hook(args, state('x', 'creating', extra.pid));
  t.equal(r.exitCode, 0, r.stderr);
  t.equal(await pingGw(extra.pid, '10.222.0.1'), 0);
  const reclaimed = logOps(dir).filter((e) => e.op === 'reclaim').map((e) => e.id).sort();
  t.same(reclaimed, ['d0', 'd1', 'd2', 'd3'], 'the dead leases, not the live one');
  t.same(Object.keys(readDb(dir).containers).sort(), ['d4', 'x']);
  // A static address whose holder died.
  const d4ip = (readDb(dir).containers.d4 as { ip: string }).ip;
  const s = await sandbox();
  t.match((await hook(args, state('s', 'creating', s.pid, { annotations: { 'io.ocinet.ip': d4ip } }))).stderr, /already leased to container d4/);
  await sbs[4]!.kill();
  const st = await hook(args, state('s', 'creating', s.pid, { annotations: { 'io.ocinet.ip': d4ip } }));
  t.equal(st.exitCode, 0, st.stderr);
  t.match(await eth0Addr(s.pid), new RegExp(`inet ${d4ip.replace(/\./g, '\\.')}/29`));
  for (const id of ['x', 's']) t.equal((await hook(args, state(id, 'stopped'))).exitCode, 0);
  t.equal(await snapshot(dir), before, 'the last one leaving takes the bridge; nothing left');
  await Promise.all([extra.kill(), s.kill()]);
  cleanup(dir);
});

t.test('a live sharer still shares; a dead owner with a live sharer hands over, not away', async (t) => {
  const dir = tempDir('share');
  const args = ['--state-dir', dir, '--subnet', '10.223.0.0/24', '--bridge', 'ocshare0'];
  const sb = await sandbox();
  const a = await hook(args, state('owner', 'creating', sb.pid, { annotations: { 'io.ocinet.publish': '8383:80' } }));
  t.equal(a.exitCode, 0, a.stderr);
  const joiner = spawn('nsenter', [`--net=/proc/${sb.pid}/ns/net`, '--', 'sleep', '3600'], { stdio: 'ignore' });
  await sleep(100);
  const j = await hook(args, state('joiner', 'creating', joiner.pid!));
  t.equal(j.exitCode, 0, j.stderr);
  t.equal((JSON.parse(j.stdout) as { sharedWith: string }).sharedWith, 'owner', 'a live owner makes a sharer');
  await sb.kill(); // the owner dies without a poststop; the namespace lives on in the joiner
  const other = await sandbox();
  const r = await hook(args, state('third', 'creating', other.pid, { annotations: { 'io.ocinet.publish': '8383:80' } }));
  t.not(r.exitCode, 0, 'the port stays with the namespace, now the joiner\'s');
  t.match(r.stderr, /already published by container joiner/);
  t.equal(await pingGw(joiner.pid!, '10.223.0.1'), 0, 'the joiner keeps the network');
  t.equal((await hook(args, state('joiner', 'stopped'))).exitCode, 0);
  t.same(readDb(dir).containers, {});
  joiner.kill('SIGKILL');
  await other.kill();
  cleanup(dir);
});

t.test('200 dead records, then one setup: only the one in the way is reclaimed; gc takes the rest', async (t) => {
  const dir = tempDir('many');
  const args = ['--state-dir', dir, '--subnet', '10.224.0.0/16', '--bridge', 'ocmany0'];
  const before = await snapshot(dir);
  const sb = await sandbox();
  t.equal((await hook(args, state('first', 'creating', sb.pid))).exitCode, 0);
  const db = JSON.parse(readFileSync(join(dir, 'state.json'), 'utf8')) as { containers: Record<string, unknown> };
  for (let i = 0; i < 200; i++) {
    // Records of containers long gone: pids beyond pid_max, namespaces that no longer exist.
    db.containers[`dead${i}`] = {
      id: `dead${i}`, mode: 'veth', bridge: 'ocmany0', ip: `10.224.1.${i + 1}`, prefix: 16, iface: 'eth0', mtu: 1500,
      ports: [{ hostPort: 20000 + i, containerPort: 80, proto: 'tcp' }], chain: dnatChain(`dead${i}`), tag: `dead${i}`,
      hostVeth: hostVethName(`dead${i}`), pid: 4194100 + i, start: 1, netns: `4:${4026000000 + i}`, createdAt: '', setupPid: 1,
    };
  }
  writeFileSync(join(dir, 'state.json'), JSON.stringify(db));
  const b = await sandbox();
  const r = await hook(args, state('b', 'creating', b.pid, { annotations: { 'io.ocinet.publish': '20007:80' } }));
  t.equal(r.exitCode, 0, r.stderr);
  t.same(logOps(dir).filter((e) => e.op === 'reclaim').map((e) => e.id), ['dead7'], 'only the record in the way');
  t.equal(Object.keys(readDb(dir).containers).length, 201, '199 dead + first + b');
  const g = await cli(['gc', '--json', '--state-dir', dir]);
  t.equal(g.exitCode, 0, g.stderr);
  t.equal((JSON.parse(g.stdout) as { containers: string[] }).containers.length, 199, 'gc reclaims the rest');
  t.same(Object.keys(readDb(dir).containers).sort(), ['b', 'first']);
  for (const id of ['b', 'first']) t.equal((await hook(args, state(id, 'stopped'))).exitCode, 0);
  t.equal(await snapshot(dir), before);
  await Promise.all([sb.kill(), b.kill()]);
  cleanup(dir);
});

t.test('a pid reused by a host process while setup waits for the lock: the host is left alone', async (t) => {
  const dir = tempDir('pidreuse');
  const args = ['--state-dir', dir, '--subnet', '10.225.0.0/24', '--bridge', 'ocpid0'];
  const resident = await sandbox(); // the bridge exists, so the hook makes its veth before the lock
  t.equal((await hook(args, state('resident', 'creating', resident.pid))).exitCode, 0);
  const hostLinks = (await sh('ip', ['-o', 'link'])).stdout.split('\n').map((l) => l.split(':')[1]).sort().join();
  const hostRoutes = (await sh('ip', ['route'])).stdout;
  // Hold the state lock as another hook would.
  const lock = await acquire(dir);
  const victim = await sandbox();
  const child = spawn(HOOK, args, { env: {}, stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number>((r) => child.once('close', (c) => r(c ?? 1)));
  child.stdin.end(state('victim', 'creating', victim.pid));
  // Wait until the hook holds the namespace open (it then waits for the lock): no fixed sleep, which a loaded machine outruns.
  const victimNs = readlinkSync(`/proc/${victim.pid}/ns/net`);
  const holds = (): boolean => {
    try {
      return readdirSync(`/proc/${child.pid}/fd`).some((fd) => {
        try {
          return readlinkSync(`/proc/${child.pid}/fd/${fd}`) === victimNs;
        } catch {
          return false;
        }
      });
    } catch {
      return false;
    }
  };
  for (let i = 0; i < 3000 && !holds(); i++) await sleep(10);
  t.ok(holds(), 'the hook holds the namespace open while it waits for the lock');
  const pid = victim.pid;
  await victim.kill();
  // Hand the pid to a process in the host's namespace (this test's pid namespace lets us pick it).
  let host: ReturnType<typeof spawn> | undefined;
  for (let i = 0; i < 20 && host?.pid !== pid; i++) {
    host?.kill('SIGKILL');
    writeFileSync('/proc/sys/kernel/ns_last_pid', String(pid - 1));
    host = spawn('sleep', ['3600'], { stdio: 'ignore' });
  }
  t.equal(host?.pid, pid, 'a host process now has the container\'s pid');
  await lock.release();
  const code = await exited;
  t.not(code, 0, 'the hook refuses');
  t.match(stderr, new RegExp(`process ${pid} exited while the hook waited for the state lock`));
  t.equal((await sh('ip', ['-o', 'link'])).stdout.split('\n').map((l) => l.split(':')[1]).sort().join(), hostLinks, 'host links unchanged (no eth0, no stray veth)');
  t.equal((await sh('ip', ['route'])).stdout, hostRoutes, 'host routes unchanged');
  t.same(Object.keys(readDb(dir).containers), ['resident']);
  host?.kill('SIGKILL');
  t.equal((await hook(args, state('resident', 'stopped'))).exitCode, 0);
  await resident.kill();
  cleanup(dir);
});

t.test('the same id under two runc roots: the running one keeps its network', async (t) => {
  const work = tempDir('tworoots');
  const dir = join(work, 'state');
  const hookArgs = ['--state-dir', dir, '--subnet', '10.226.0.0/24', '--bridge', 'ocroots0'];
  const before = await snapshot(dir);
  const one = new Runc(work, join(work, 'root1'), hookArgs);
  const two = new Runc(work, join(work, 'root2'), hookArgs);
  const b1 = await one.bundle('web-one');
  const b2 = await two.bundle('web-two');
  t.equal((await one.start('web', b1)).exitCode, 0, 'first web runs');
  const second = await two.start('web', b2);
  t.not(second.exitCode, 0, 'second web (another root) is refused');
  t.match(second.stderr, /already has a network/);
  // runc ran poststop for the refused one: it must not have touched the first.
  t.ok(logOps(dir).some((e) => e.op === 'teardown-skipped' && e.id === 'web'), 'its teardown was a no-op');
  t.equal((await one.exec('web', ['ping', '-c1', '-W2', '10.226.0.1'])).exitCode, 0, 'first web still reaches its gateway');
  t.same(Object.keys(readDb(dir).containers), ['web']);
  await two.run(['delete', '--force', 'web'], false);
  await one.stop('web');
  t.equal(await snapshot(dir), before, 'first web\'s own poststop removed everything');
  cleanup(work);
});

t.test('ids that are Object.prototype names are plain ids', async (t) => {
  const dir = tempDir('protoids');
  const args = ['--state-dir', dir, '--subnet', '10.227.0.0/24', '--bridge', 'ocproto0'];
  const before = await snapshot(dir);
  const ids = ['constructor', '__proto__', 'toString', 'hasOwnProperty'];
  const sbs = await Promise.all(ids.map(() => sandbox()));
  for (const [i, id] of ids.entries()) {
    const r = await hook(args, state(id, 'creating', sbs[i]!.pid, { annotations: { 'io.ocinet.publish': `${8400 + i}:80` } }));
    t.equal(r.exitCode, 0, `${id}: ${r.stderr}`);
    t.equal(await pingGw(sbs[i]!.pid, '10.227.0.1'), 0, `${id} reaches its gateway`);
  }
  const list = JSON.parse((await cli(['list', '--json', '--state-dir', dir])).stdout) as { id: string }[];
  t.same(list.map((c) => c.id).sort(), [...ids].sort());
  for (const id of ids) t.equal((await hook(args, state(id, 'stopped'))).exitCode, 0, `${id} torn down`);
  t.equal(await snapshot(dir), before);
  await Promise.all(sbs.map((s) => s.kill()));
  cleanup(dir);
});

t.test('a truncated state file: list says so, setup rebuilds it from the kernel, teardown and gc leave nothing', async (t) => {
  const dir = tempDir('trunc');
  const args = ['--state-dir', dir, '--subnet', '10.228.0.0/24', '--bridge', 'octrunc0'];
  const before = await snapshot(dir);
  const sa = await sandbox();
  const sb = await sandbox();
  t.equal((await hook(args, state('pa', 'creating', sa.pid, { annotations: { 'io.ocinet.publish': '8501:80' } }))).exitCode, 0);
  t.equal((await hook(args, state('pb', 'creating', sb.pid))).exitCode, 0);
  const file = join(dir, 'state.json');
  const text = readFileSync(file, 'utf8');
  writeFileSync(file, text.slice(0, Math.floor(text.length / 2)));
  const l = await cli(['list', '--state-dir', dir]);
  t.equal(l.exitCode, 1);
  t.match(l.stderr, /^ocinet: state file .*state\.json is damaged .*run 'ocinet gc'/);
  t.equal(l.stderr.trim().split('\n').length, 1, 'one line');
  const sc = await sandbox();
  const r = await hook(args, state('pc', 'creating', sc.pid));
  t.equal(r.exitCode, 0, r.stderr);
  t.match(r.stderr, /^ocinet-hook: warning: state file .* is damaged .*rebuilt the state from the kernel: 2 containers/);
  t.equal(r.stderr.trim().split('\n').length, 1, 'one warning line');
  t.notMatch(JSON.parse(r.stdout).ip, /^10\.228\.0\.[23]$/, 'no address handed out twice');
  t.ok(readdirSync(dir).some((f) => f.startsWith('state.json.damaged-')), 'the damaged file is kept aside');
  const db = readDb(dir).containers;
  t.ok(db.pa, 'pa recovered by its ports tag');
  t.equal(db.pa?.ip, '10.228.0.2');
  t.equal(Object.keys(db).length, 3);
  // pb's id was in no tag: its teardown still finds it by its veth's name.
  for (const id of ['pa', 'pb', 'pc']) t.equal((await hook(args, state(id, 'stopped'))).exitCode, 0, `teardown ${id}`);
  t.equal(await snapshot(dir), before, 'nothing left');
  await Promise.all([sa.kill(), sb.kill(), sc.kill()]);
  cleanup(dir);
});

t.test('a truncated state file, then teardown and gc: nothing left', async (t) => {
  const dir = tempDir('trunc2');
  const args = ['--state-dir', dir, '--subnet', '10.229.0.0/24', '--bridge', 'octrunc1'];
  const before = await snapshot(dir);
  const sa = await sandbox();
  const sb = await sandbox();
  t.equal((await hook(args, state('qa', 'creating', sa.pid, { annotations: { 'io.ocinet.publish': '8601:80' } }))).exitCode, 0);
  t.equal((await hook(args, state('qb', 'creating', sb.pid, { annotations: { 'io.ocinet.publish': '8602:80' } }))).exitCode, 0);
  writeFileSync(join(dir, 'state.json'), '{"version":1,"netw');
  const d = await hook(args, state('qa', 'stopped'));
  t.equal(d.exitCode, 0, d.stderr);
  t.match(d.stderr, /warning: state file .* is damaged/);
  t.notOk((await natRules()).includes(dnatChain('qa', stateId(dir))), "qa's rules are gone");
  await sb.kill(); // qb dies without a poststop: only gc can know
  writeFileSync(join(dir, 'state.json'), '');
  const g = await cli(['gc', '--json', '--state-dir', dir]);
  t.equal(g.exitCode, 0, g.stderr);
  t.match(g.stderr, /state file .* is damaged \(empty\)/);
  t.equal(await snapshot(dir), before, 'gc removed what the dead qb left');
  await sa.kill();
  cleanup(dir);
});

t.test('damaged records: a missing ports field is repaired, a bad address is kept by name and removed', async (t) => {
  const dir = tempDir('badrec');
  const args = ['--state-dir', dir, '--subnet', '10.230.0.0/24', '--bridge', 'ocbad0'];
  const before = await snapshot(dir);
  const sa = await sandbox();
  const sb = await sandbox();
  t.equal((await hook(args, state('ra', 'creating', sa.pid))).exitCode, 0);
  t.equal((await hook(args, state('rb', 'creating', sb.pid, { annotations: { 'io.ocinet.publish': '8701:80' } }))).exitCode, 0);
  const file = join(dir, 'state.json');
  const db = JSON.parse(readFileSync(file, 'utf8')) as { containers: Record<string, Record<string, unknown>> };
  delete db.containers.ra!.ports; // as a record of an older or hand-edited state
  db.containers.rb!.ip = '10.230.0.300';
  writeFileSync(file, JSON.stringify(db));
  const l = await cli(['list', '--json', '--state-dir', dir]);
  t.equal(l.exitCode, 0, l.stderr);
  const rows = JSON.parse(l.stdout) as { id: string; alive: boolean; damaged?: string }[];
  t.match(rows.find((r) => r.id === 'rb')?.damaged, /field 'ip': "10\.230\.0\.300" is not an IPv4 address/);
  t.equal(rows.find((r) => r.id === 'ra')?.alive, true, 'ra (no ports field) is read and alive');
  const sc = await sandbox();
  const r = await hook(args, state('rc', 'creating', sc.pid));
  t.equal(r.exitCode, 0, r.stderr);
  t.match(r.stderr, /^ocinet-hook: warning: state file .*: record 'rb' is damaged \(field 'ip'/);
  t.equal(r.stderr.trim().split('\n').length, 1);
  const sd = await sandbox();
  const again = await hook(args, state('rd', 'creating', sd.pid));
  t.equal(again.stderr, '', 'said once: the repaired record is saved');
  const d = await hook(args, state('rb', 'stopped'));
  t.equal(d.exitCode, 0, d.stderr);
  t.notOk((await natRules()).includes(dnatChain('rb', stateId(dir))), "rb's rules are gone by name");
  t.equal((await sh('ip', ['link', 'show', hostVethName('rb', stateId(dir))], { reject: false })).exitCode, 1, "rb's veth is gone by name");
  for (const id of ['ra', 'rc', 'rd']) t.equal((await hook(args, state(id, 'stopped'))).exitCode, 0);
  t.equal(await snapshot(dir), before);
  await Promise.all([sa.kill(), sb.kill(), sc.kill(), sd.kill()]);
  cleanup(dir);
});

t.test('records of the previous version (no start time) are read; liveness is pid and netns', async (t) => {
  const dir = tempDir('oldver');
  const args = ['--state-dir', dir, '--subnet', '10.231.0.0/24', '--bridge', 'ocold0'];
  const sa = await sandbox();
  t.equal((await hook(args, state('old', 'creating', sa.pid, { annotations: { 'io.ocinet.publish': '8801:80' } }))).exitCode, 0);
  const file = join(dir, 'state.json');
  const db = JSON.parse(readFileSync(file, 'utf8')) as { containers: Record<string, Record<string, unknown>> };
  delete db.containers.old!.start;
  delete db.containers.old!.bundle;
  writeFileSync(file, JSON.stringify(db));
  const list = JSON.parse((await cli(['list', '--json', '--state-dir', dir])).stdout) as { id: string; alive: boolean }[];
  t.equal(list[0]?.alive, true, 'alive by pid and netns');
  const sb = await sandbox();
  t.match((await hook(args, state('new', 'creating', sb.pid, { annotations: { 'io.ocinet.publish': '8801:80' } }))).stderr, /already published by container old/);
  await sa.kill();
  const r = await hook(args, state('new', 'creating', sb.pid, { annotations: { 'io.ocinet.publish': '8801:80' } }));
  t.equal(r.exitCode, 0, r.stderr);
  t.equal((await hook(args, state('new', 'stopped'))).exitCode, 0);
  t.same(readDb(dir).containers, {});
  await sb.kill();
  cleanup(dir);
});

t.test('the bridge deleted behind ocinet\'s back: the next setup makes it again and re-attaches the running', async (t) => {
  const dir = tempDir('rebridge');
  const args = ['--state-dir', dir, '--subnet', '10.232.0.0/24', '--bridge', 'ocgone0'];
  const before = await snapshot(dir);
  const sa = await sandbox();
  t.equal((await hook(args, state('ba', 'creating', sa.pid))).exitCode, 0);
  await sh('ip', ['link', 'del', 'ocgone0']);
  t.not(await pingGw(sa.pid, '10.232.0.1'), 0, 'without the bridge, ba is cut off');
  const sb = await sandbox();
  t.equal((await hook(args, state('bb', 'creating', sb.pid))).exitCode, 0);
  t.match((await sh('ip', ['-o', 'link', 'show', hostVethName('ba', stateId(dir))])).stdout, /master ocgone0/, "ba's veth is on the bridge again");
  // Its neighbour entry for the gateway failed while the bridge was gone: allow ARP a retry.
  t.equal((await inNs(sa.pid, ['busybox', 'ping', '-c3', '-W5', '10.232.0.1'], false)).exitCode, 0, 'ba reaches its gateway again');
  t.equal(await pingGw(sb.pid, '10.232.0.1'), 0);
  for (const id of ['ba', 'bb']) t.equal((await hook(args, state(id, 'stopped'))).exitCode, 0);
  t.equal(await snapshot(dir), before);
  await Promise.all([sa.kill(), sb.kill()]);
  cleanup(dir);
});

t.test('kata-network: a device held by a dead sandbox is released for the next one', async (t) => {
  const dir = tempDir('kdev');
  const iface = (name: string): string => JSON.stringify({ device: 'okdev0', name, hwAddr: '02:00:00:00:0a:01', mtu: 1500 });
  const a = await sandbox();
  const add = await cli(['network', 'add-iface', '--state-dir', dir, '--pid', String(a.pid), '-'], iface('na'));
  t.equal(add.exitCode, 0, add.stderr);
  const b = await sandbox();
  const held = await cli(['network', 'add-iface', '--state-dir', dir, '--pid', String(b.pid), '-'], iface('nb'));
  t.not(held.exitCode, 0, 'refused while a lives');
  t.match(held.stderr, /device 'okdev0' is already used by sandbox/);
  await a.kill();
  const r = await cli(['network', 'add-iface', '--state-dir', dir, '--pid', String(b.pid), '-'], iface('nb'));
  t.equal(r.exitCode, 0, r.stderr);
  t.match((await inNs(b.pid, ['ip', '-o', 'link', 'show', 'nb'])).stdout, /nb@/, 'b has the interface');
  t.equal(readdirSync(join(dir, 'sandboxes')).length, 1, "only b's sandbox record is left");
  t.equal((await cli(['network', 'del-iface', '--state-dir', dir, '--pid', String(b.pid), '-'], JSON.stringify({ name: 'nb' }))).exitCode, 0);
  await b.kill();
  t.ok(readdirSync(dir).some((f) => f.startsWith('lock.sb-')), 'each sandbox had a lock of its own');
  t.equal((await cli(['gc', '--state-dir', dir])).exitCode, 0);
  t.same(readdirSync(dir).filter((f) => f.startsWith('lock.sb-')), [], 'gc removes the locks of sandboxes without a record');
  cleanup(dir);
});
