// Local users against the state lock and the state dir (issue 9, items 4 and
// 11): an unprivileged user (uid 65534 through setpriv) must not be able to
// stall setups by holding a lock name or file, nor hand root a state dir it
// can change. Plus the lock's own promises: released when its holder is
// killed, mutual exclusion under concurrency.
import t from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, closeSync, existsSync, lchownSync, mkdirSync, openSync, readdirSync, readFileSync, realpathSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cleanup, cli, hook, HOOK, ROOT, sandbox, snapshot, state, tempDir } from './lib/env.js';

const NOBODY = 65534;

// Whatever a test started dies when it ends, failed assertions included (a live child would hold tap open).
const live: { kill(): Promise<void> }[] = [];
function keep<T extends { kill(): Promise<void> }>(x: T): T {
  live.push(x);
  return x;
}
t.afterEach(async () => {
  await Promise.all(live.splice(0).map((x) => x.kill()));
});
const SUBNET = ['--subnet', '10.231.0.0/24'];

/** Run a node script as uid/gid 65534 with no groups; resolves with its first stdout line, the process keeps running. */
async function asNobody(script: string, args: string[]): Promise<{ proc: ChildProcess; report: Record<string, string> }> {
  const proc = spawn('setpriv', ['--reuid', String(NOBODY), '--regid', String(NOBODY), '--clear-groups', '--', process.execPath, '-e', script, '--', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: '/',
  });
  let out = '';
  let err = '';
  proc.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const line = await new Promise<string>((resolve, reject) => {
    proc.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    proc.once('exit', (c) => reject(new Error(`as uid ${NOBODY}: exit ${c}: ${err}`)));
  });
  return { proc, report: JSON.parse(line) as Record<string, string> };
}

const kill = (p: ChildProcess): Promise<void> =>
  new Promise((r) => {
    if (p.exitCode !== null || p.signalCode !== null) return r();
    p.once('exit', () => r());
    p.kill('SIGKILL');
  });

// Everything uid 65534 can try against a state dir: the old abstract lock
// name (exactly as the old hook bound it through libuv, and NUL-padded to
// sun_path's 108 bytes), the lock file (open, for flock) and new files in the
// dir. Reports what worked and holds the names until killed.
const SQUAT = `
const net = require('node:net'), fs = require('node:fs');
const [dir] = process.argv.slice(1);
const report = {};
const bind = (name) => new Promise((r) => {
  const s = net.createServer();
  s.once('error', (e) => r(e.code));
  s.listen({ path: name, exclusive: true }, () => r('bound'));
});
const tryFs = (f) => { try { f(); return 'ok'; } catch (e) { return e.code; } };
(async () => {
  const name = '\\0ocinet-lock:' + dir;
  report.abstract = await bind(name);
  report.abstractPadded = await bind(name.padEnd(107, '\\0'));
  report.openLock = tryFs(() => fs.openSync(dir + '/lock', 'r'));
  report.openState = tryFs(() => fs.openSync(dir + '/state.json', 'r'));
  report.create = tryFs(() => fs.writeFileSync(dir + '/lock.new', 'x'));
  report.list = tryFs(() => fs.readdirSync(dir));
  process.stdout.write(JSON.stringify(report) + '\\n');
  setInterval(() => {}, 1 << 30);
})();
`;

t.test('uid 65534 holding every lock name and file it can reach cannot stall setups', async (t) => {
  const work = tempDir('squat');
  const dir = join(work, 'state');
  const args = ['--state-dir', dir, ...SUBNET, '--bridge', 'oclu0'];
  const before = await snapshot(dir);
  // A first setup and teardown: the state dir, its lock file and state.json exist.
  const warm = keep(await sandbox());
  t.equal((await hook(args, state('warm', 'creating', warm.pid))).exitCode, 0);
  t.equal((await hook(args, state('warm', 'stopped'))).exitCode, 0);
  await warm.kill();
  const lock = join(dir, 'lock');
  t.equal(statSync(dir).mode & 0o7777, 0o700, 'state dir 0700');
  t.equal(existsSync(lock) && statSync(lock).mode & 0o777, 0o600, 'lock file there, 0600');
  t.equal(statSync(join(dir, 'state.json')).mode & 0o777, 0o600, 'state file 0600');

  const { proc, report } = await asNobody(SQUAT, [realpathSync(dir)]);
  keep({ kill: () => kill(proc) });
  t.equal(report.abstract, 'bound', 'the user holds the old abstract lock name');
  t.match(report.abstractPadded, /^(bound|EADDRINUSE)$/, 'and its padded form');
  t.equal(report.openLock, 'EACCES', 'cannot open the lock file (so cannot flock it)');
  t.equal(report.openState, 'EACCES', 'cannot read the state');
  t.equal(report.create, 'EACCES', 'cannot create files in the state dir');
  t.equal(report.list, 'EACCES', 'cannot list the state dir');

  // 12 concurrent setups while the user squats: all succeed, distinct addresses.
  const sbs = await Promise.all([...Array(12)].map(async () => keep(await sandbox())));
  const runs = await Promise.all(sbs.map((s, i) => hook(args, state(`sq${i}`, 'creating', s.pid))));
  runs.forEach((r, i) => t.equal(r.exitCode, 0, `setup ${i} succeeds: ${r.stderr}`));
  const ips = runs.filter((r) => r.exitCode === 0).map((r) => (JSON.parse(r.stdout) as { ip: string }).ip);
  t.equal(new Set(ips).size, 12, '12 distinct addresses');
  const downs = await Promise.all(sbs.map((_, i) => hook(args, state(`sq${i}`, 'stopped'))));
  downs.forEach((r, i) => t.equal(r.exitCode, 0, `teardown ${i}: ${r.stderr}`));
  t.equal(await snapshot(dir), before, 'all gone');
  await kill(proc);
  await Promise.all(sbs.map((s) => s.kill()));
  cleanup(work);
});

/** Pids holding a flock on the file with this inode (from /proc/locks). */
function flockHolders(ino: number): number[] {
  return readFileSync('/proc/locks', 'utf8')
    .split('\n')
    .map((l) => l.split(/\s+/))
    .filter((f) => f[1] === 'FLOCK' && f[5]?.endsWith(`:${ino}`))
    .map((f) => Number(f[4]));
}

t.test('a holder killed by SIGKILL does not keep the lock, nor do its children', async (t) => {
  const work = tempDir('killed');
  const dir = join(work, 'state');
  const args = ['--state-dir', dir, ...SUBNET, '--bridge', 'oclu1'];
  const sb = keep(await sandbox());
  t.equal((await hook(args, state('first', 'creating', sb.pid))).exitCode, 0);
  const ino = statSync(join(dir, 'lock')).ino;
  t.same(flockHolders(ino), [], 'free between hooks');

  // The hook's own lock call (dist/bin/native.node), in a process that also starts a long-lived child.
  const holderScript = `
    const m = { exports: {} };
    process.dlopen(m, ${JSON.stringify(join(ROOT, 'dist/bin/native.node'))});
    const fd = m.exports.lock(${JSON.stringify(join(dir, 'lock'))});
    const child = require('node:child_process').spawn('sleep', ['3600'], { stdio: 'ignore' });
    process.stdout.write(JSON.stringify({ fd, child: child.pid }) + '\\n');
    setInterval(() => {}, 1 << 30);`;
  const holder = spawn(process.execPath, ['-e', holderScript], { stdio: ['ignore', 'pipe', 'inherit'] });
  keep({ kill: () => kill(holder) });
  const line = await new Promise<string>((r) => holder.stdout!.once('data', (b: Buffer) => r(b.toString())));
  const { fd, child } = JSON.parse(line) as { fd: number; child: number };
  keep({ kill: async () => void (existsSync(`/proc/${child}`) && process.kill(child, 'SIGKILL')) });
  t.ok(fd >= 0, 'the holder took the lock');
  t.same(flockHolders(ino), [holder.pid], 'held by the holder');
  await kill(holder);
  t.same(flockHolders(ino), [], 'released by its death, though its child lives on');
  t.doesNotThrow(() => process.kill(child, 0), 'the child is alive');
  const sb2 = keep(await sandbox());
  const r = await hook(args, state('second', 'creating', sb2.pid));
  t.equal(r.exitCode, 0, `the next setup works: ${r.stderr}`);
  process.kill(child, 'SIGKILL');

  // The real hook, killed at the moment /proc/locks shows it holding the lock.
  let caught = 0;
  const input = join(work, 'input.json');
  for (let i = 0; i < 30 && caught < 3; i++) {
    const s = keep(await sandbox());
    // stdin from a file: the loop below blocks this process's event loop.
    writeFileSync(input, state(`k${i}`, 'creating', s.pid));
    const fd = openSync(input, 'r');
    const h = spawn(HOOK, args, { env: {}, stdio: [fd, 'ignore', 'ignore'] });
    keep({ kill: () => kill(h) });
    closeSync(fd);
    const deadline = Date.now() + 3000;
    // Poll synchronously: the hook holds the lock for a few ms only.
    while (Date.now() < deadline) {
      if (flockHolders(ino).includes(h.pid!)) {
        h.kill('SIGKILL');
        caught++;
        break;
      }
      if (existsSync(`/proc/${h.pid}/stat`) && readFileSync(`/proc/${h.pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z')) break;
    }
    await new Promise<void>((res) => (h.exitCode !== null || h.signalCode !== null ? res() : h.once('exit', () => res())));
    t.same(flockHolders(ino), [], `free after hook ${i} ended`);
    await hook(args, state(`k${i}`, 'stopped'));
    await s.kill();
  }
  t.ok(caught > 0, `a hook was killed while holding the lock (${caught} times)`);
  const sb3 = keep(await sandbox());
  const after = await hook(args, state('third', 'creating', sb3.pid));
  t.equal(after.exitCode, 0, `a setup after the killed hooks works: ${after.stderr}`);
  for (const id of ['first', 'second', 'third']) t.equal((await hook(args, state(id, 'stopped'))).exitCode, 0);
  t.equal((await cli(['gc', '--state-dir', dir])).exitCode, 0);
  await Promise.all([sb, sb2, sb3].map((s) => s.kill()));
  cleanup(work);
});

t.test('a state dir a non-root user can change is refused: one line, exit 1, nothing changed', async (t) => {
  const work = tempDir('unsafe');
  chmodSync(work, 0o755); // so uid 65534 reaches its own dirs below
  const mk = (p: string, mode: number, uid = 0): string => {
    mkdirSync(p, { recursive: true });
    chmodSync(p, mode);
    chownSync(p, uid, uid);
    return p;
  };
  const good = mk(join(work, 'good'), 0o700);
  const sticky = mk(join(work, 'sticky'), 0o1777);
  const userLink = join(sticky, 'link');
  symlinkSync(good, userLink);
  lchownSync(userLink, NOBODY, NOBODY);
  const cases: [string, string, RegExp][] = [
    ['owned by uid 65534', mk(join(work, 'theirs'), 0o700, NOBODY), /is owned by uid 65534, not root/],
    ['mode 0777', mk(join(work, 'open'), 0o777), /is 0777: writable by others/],
    ['group writable', mk(join(work, 'group'), 0o770), /is 0770: writable by its group/],
    ['under a parent uid 65534 owns', mk(join(mk(join(work, 'userparent'), 0o755, NOBODY), 'state'), 0o700), /userparent is owned by uid 65534/],
    ['under a world-writable parent', mk(join(mk(join(work, 'openparent'), 0o777), 'state'), 0o700), /openparent is 0777: writable by others/],
    ['through a symlink uid 65534 owns', userLink, /symlink .*link is owned by uid 65534/],
    ['missing under a sticky dir', join(sticky, 'new'), /does not exist and .*sticky is writable by others/],
  ];
  const before = await snapshot();
  const sb = keep(await sandbox());
  for (const [what, dir, why] of cases) {
    const listing = existsSync(dir) ? readdirSync(dir).join() : null;
    const r = await hook(['--state-dir', dir, ...SUBNET, '--bridge', 'oclu2'], state('x', 'creating', sb.pid));
    t.equal(r.exitCode, 1, `${what}: hook exits 1`);
    t.match(r.stderr, why, `${what}: says why`);
    t.match(r.stderr, /^ocinet-hook: state dir [^\n]* refused: [^\n]*\(fix: [^\n]*\)$/, `${what}: one line with the fix`);
    const down = await hook(['--state-dir', dir, ...SUBNET, '--bridge', 'oclu2'], state('x', 'stopped'));
    t.equal(down.exitCode, 1, `${what}: teardown refused too`);
    for (const cmd of [['gc'], ['list'], ['network', 'list-ifaces', '--pid', String(sb.pid)]]) {
      const c = await cli([...cmd, '--state-dir', dir]);
      t.equal(c.exitCode, 1, `${what}: ocinet ${cmd[0]} exits 1`);
      t.match(c.stderr, /^ocinet[^\n]*: state dir [^\n]* refused: [^\n]*$/, `${what}: ocinet ${cmd[0]} says one line`);
    }
    t.equal(existsSync(dir) ? readdirSync(dir).join() : null, listing, `${what}: nothing written in it (no log, lock or state)`);
  }
  t.equal(await snapshot(), before, 'no link, rule or address made');
  t.same(readdirSync(good), [], 'the dir behind the symlink untouched');

  // The allowed shapes: a root 0700 dir below a root sticky dir, through a root-owned symlink.
  const ok = mk(join(sticky, 'rootstate'), 0o700);
  const rootLink = join(work, 'rootlink');
  symlinkSync(ok, rootLink);
  for (const dir of [ok, rootLink]) {
    const r = await hook(['--state-dir', dir, ...SUBNET, '--bridge', 'oclu2'], state('y', 'creating', sb.pid));
    t.equal(r.exitCode, 0, `${dir} is root's: setup works (${r.stderr})`);
    t.equal((await hook(['--state-dir', dir, ...SUBNET, '--bridge', 'oclu2'], state('y', 'stopped'))).exitCode, 0);
  }
  t.equal(await snapshot(), before);
  await sb.kill();
  cleanup(work);
});

t.test('ocinet doctor reports the state dir check and the lock', async (t) => {
  const work = tempDir('doctor');
  const good = join(work, 'state');
  const r = await cli(['doctor', '--state-dir', good]);
  t.match(r.stdout, /^ok +state directory: .*state: root's alone \(created\), mode 0700$/m);
  t.match(r.stdout, /^ok +state lock: flock\(2\) on STATE_DIR\/lock .*state\/lock free$/m);
  const open = join(work, 'open');
  mkdirSync(open, { mode: 0o777 });
  chmodSync(open, 0o777);
  const bad = await cli(['doctor', '--state-dir', open]);
  t.equal(bad.exitCode, 1, 'a refused state dir fails doctor');
  t.match(bad.stdout, /^FAIL +state directory: state dir .*open refused: .*open is 0777: writable by others {2}\(fix: use a state dir owned by root, mode 0700/m);
  t.notMatch(bad.stdout, /state lock/, 'no lock check on a refused dir');
  t.same(readdirSync(open), [], 'doctor wrote nothing there');
  chmodSync(open, 0o755);
  const loose = await cli(['doctor', '--state-dir', open]);
  t.match(loose.stdout, /^ok +state directory: .*mode 0755$/m, '0755 is not refused (nobody else can write)');
  t.match(loose.stdout, /^warn +state directory permissions: .*open is readable by others {2}\(fix: chmod 0700 .*open\)$/m, 'but warned about');
  cleanup(work);
});
