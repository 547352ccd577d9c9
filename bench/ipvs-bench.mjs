// ocinet IPVS benchmark (make bench, after bench.mjs; OCINET_BENCH_IPVS=0 skips it).
// Runs inside the namespace bench/run.sh creates, against one booted test guest
// (TCG). Restoring 20000 rules (5000 services × 3 real servers):
//   ocinet  `ocinet ipvs ipvsadm --restore -` (whole CLI process, spawn → exit)
//   (a)     `ipvsadm --restore` of the same file run directly in the guest
//           through ONE agent guest-exec (file as input-data): the floor
//   (b)     one agent guest-exec per rule, timed over a few hundred rules and
//           extrapolated to 20000: what adding rules one by one costs
// And one rule as a user adds it: one `ocinet ipvs ipvsadm --parameters` process
// (spawn to exit, 20 timed back to back, then 20 spaced) against one agent exec of
// (b). The calls run with PATH alone in their environment, as the hook bench runs
// hooks and as sudo or a root login would run them: this machine's environment sets
// NODE_EXTRA_CA_CERTS, which makes every node start load a CA store (~35 ms); the
// same calls in the bench's own environment are an info row. Other info rows: the
// calls by default, with no hold (each connects to the agent itself, and waits for
// an idle qemu-ga's next read of its port, every 100 ms); the timed calls, the
// proxy's and the console guest's pass --agent-hold 500 (opt-in since a held
// connection once lost a restore's reply in CI); a few untimed calls through
// a counting proxy on the agent socket, to show what one call asks of the agent
// (connections, guest-exec, guest-exec-status polls, other requests); and the same
// calls and raw execs in a second guest whose agent port is a virtconsole (its host
// end always open, so no 100 ms idle read).
// Targets: ocinet/(a) <= 1.1, (b)/ocinet >= 20, one call (back to back) / one exec
// of (b) <= 2.0. Every timed restore starts in a freshly booted guest (untimed):
// after a clear the kernel keeps deleted real servers in its dest trash for ~2 min
// and every add scans it, so runs after clears would depend on how many came
// before. Every run is checked to have really loaded its rules (line count of
// /proc/net/ip_vs).
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

if (process.env.OCINET_BENCH_NS !== '1') throw new Error('run bench/run.sh, not ipvs-bench.mjs directly');

const ROOT = new URL('..', import.meta.url).pathname.replace(/\/$/, '');
const CLI = join(ROOT, 'dist/bin/ocinet');
const ROUNDS = Number(process.env.BENCH_IPVS_ROUNDS ?? 2);
const ONE_BY_ONE = Number(process.env.BENCH_IPVS_ONE_BY_ONE ?? 300); // rules timed for (b)
const CLI_ONE_BY_ONE = Number(process.env.BENCH_IPVS_CLI_RULES ?? 20); // informational: ocinet per rule
const SERVICES = 5000;
const RULES = SERVICES * 4;
const TARGETS = { restoreRatio: 1.1, oneByOneRatio: 20, callRatio: 2.0 };
const TMP = mkdtempSync(join(tmpdir(), 'ocinet-ipvs-bench-'));
const GUEST = join(TMP, 'guest');
const QMP = join(GUEST, 'qmp.sock');
const QGA = join(GUEST, 'qga.sock');
const STATE = join(TMP, 'state');
const SB = ['--qmp', QMP, '--qga', QGA, '--state-dir', STATE];
/** The timed calls keep their agent connection for the next (opt-in: the default holds nothing). */
const HOLD = ['--agent-hold', '500'];
const BRIDGE = 'ocbipvs0';
const progress = (msg) => process.stderr.isTTY && process.stderr.write(`\r${msg}\x1b[K`);
// The calls' environment: PATH alone (see the top).
const CALL_ENV = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' };

// ---------- processes ----------

function run(file, args, { input = '', timeout = 900_000, env = CALL_ENV } = {}) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const p = spawn(file, args, { timeout, env });
    let stdout = '', stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, ms: performance.now() - t0 }));
    p.stdin.on('error', () => {});
    p.stdin.end(input);
  });
}

function must(r, what) {
  if (r.code === 0) return r;
  throw new Error(`${what} FAILED (exit ${r.code ?? r.signal}): ${(r.stderr || r.stdout).trim().slice(0, 500)}`);
}

// ---------- a minimal guest-agent client: JSON lines over the unix socket ----------
// QEMU serves one client per chardev socket: close it before ocinet connects.

async function agent(path) {
  const sock = net.connect(path);
  await new Promise((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject); });
  let buf = '', waiter = null, n = 0, dead = null;
  sock.on('data', (d) => {
    buf += d.toString('latin1');
    for (let i; (i = buf.indexOf('\n')) >= 0;) {
      const line = buf.slice(0, i).replace(/^[^{]*/, ''); // drop the 0xFF resync echo and garbage
      buf = buf.slice(i + 1);
      let msg;
      try { msg = JSON.parse(line); } catch { continue; }
      if (waiter?.match(msg)) { const w = waiter; waiter = null; w.resolve(msg); }
    }
  });
  const fail = (e) => { dead = e; waiter?.reject(e); waiter = null; };
  sock.on('error', (e) => fail(new Error(`guest agent: ${e.message}`)));
  sock.on('close', () => fail(new Error('guest agent connection closed')));
  const request = (text, match, ms = 30_000) => new Promise((resolve, reject) => {
    if (dead) return reject(dead);
    const timer = setTimeout(() => { waiter = null; reject(new Error(`guest agent: no reply within ${ms} ms`)); }, ms);
    waiter = { match, resolve: (m) => { clearTimeout(timer); resolve(m); }, reject: (e) => { clearTimeout(timer); reject(e); } };
    sock.write(text, 'latin1');
  });
  const cmd = async (execute, args) => {
    const id = `bench-${++n}`;
    const m = await request(JSON.stringify({ execute, arguments: args, id }) + '\n', (x) => x.id === id);
    if (m.error) throw new Error(`guest agent ${execute}: ${m.error.desc}`);
    return m.return;
  };
  const syncId = Math.floor(Math.random() * 2 ** 31);
  await request(`\xff${JSON.stringify({ execute: 'guest-sync', arguments: { id: syncId } })}\n`, (m) => m.return === syncId, 10_000);
  return {
    /** guest-exec, then poll guest-exec-status (5 ms doubling to 50 ms) until it exits. */
    async exec(path, arg, input, timeoutMs = 600_000) {
      const a = { path, arg, 'capture-output': true };
      if (input !== undefined) a['input-data'] = Buffer.from(input).toString('base64');
      const { pid } = await cmd('guest-exec', a);
      const deadline = Date.now() + timeoutMs;
      for (let delay = 5; ; delay = Math.min(delay * 2, 50)) {
        const st = await cmd('guest-exec-status', { pid });
        const text = (s) => Buffer.from(s ?? '', 'base64').toString();
        if (st.exited) return { code: st.exitcode ?? 128 + (st.signal ?? 0), stdout: text(st['out-data']), stderr: text(st['err-data']) };
        if (Date.now() > deadline) throw new Error(`guest exec ${path}: still running after ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, delay));
      }
    },
    close() { sock.removeAllListeners('close'); sock.destroy(); },
  };
}

// ---------- what one CLI call asks of the agent, and when: a proxy in front of its socket ----------

/** Forwards a client to the agent socket, logging [ms since start(), what] of every request and reply. */
async function agentProxy(target, path) {
  const log = [];
  let t0 = performance.now();
  const note = (what) => log.push([performance.now() - t0, what]);
  const lines = (onMsg) => {
    let buf = '';
    return (d) => {
      buf += d.toString('latin1');
      for (let i; (i = buf.indexOf('\n')) >= 0;) {
        const line = buf.slice(0, i).replace(/^[^{]*/, '');
        buf = buf.slice(i + 1);
        try { onMsg(JSON.parse(line)); } catch {}
      }
    };
  };
  const server = net.createServer((c) => {
    note('connect');
    const up = net.connect(target);
    c.on('data', (d) => up.write(d));
    c.on('data', lines((m) => note(`> ${m.execute}${m.execute === 'guest-exec' ? ` ${m.arguments.path}` : ''}`)));
    up.on('data', (d) => c.write(d));
    up.on('data', lines((m) => note(m.return?.exited === true ? '< exited' : '< reply')));
    c.on('close', () => note('close'));
    for (const [a, b] of [[c, up], [up, c]]) { a.on('error', () => {}); a.on('close', () => b.destroy()); }
  });
  await new Promise((resolve, reject) => { server.once('error', reject); server.listen(path, resolve); });
  return { log, start() { log.length = 0; t0 = performance.now(); }, close: () => new Promise((r) => server.close(r)) };
}

/**
 * One call's log cut into phases (ms): start to its first request, the agent's wake (to
 * the first reply), to the exec, the exec, then to the process's exit. A call on a held
 * connection neither connects nor closes; the first call of a series does both.
 */
function phasesOf(log, total) {
  const at = (pred, from = 0) => log.findIndex(([, w], k) => k >= from && pred(w));
  const first = at((w) => w.startsWith('> '));
  const answered = at((w) => w.startsWith('<'), first);
  const exec = log.findLastIndex(([, w]) => w.endsWith('/usr/sbin/ipvsadm'));
  const exited = at((w) => w === '< exited', exec);
  if ([first, answered, exec, exited].includes(-1)) throw new Error(`unexpected agent exchange: ${JSON.stringify(log)}`);
  const ms = (k) => log[k][0];
  return { start: ms(first), wake: ms(answered) - ms(first), beforeExec: ms(exec) - ms(answered), exec: ms(exited) - ms(exec), exit: total - ms(exited), total };
}

/** Waits until no holder keeps an agent connection for the state dir (they linger 500 ms). */
async function noHolder(stateDir) {
  const dir = join(stateDir, 'agent');
  for (let i = 0; i < 100; i++) {
    let held = [];
    try { held = readdirSync(dir); } catch {}
    if (held.length === 0) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`an agent connection is still held in ${dir}`);
}

async function withAgent(fn, path = QGA) {
  const a = await agent(path);
  try { return await fn(a); } finally { a.close(); }
}

async function guestRules() {
  return withAgent(async (a) => {
    const r = await a.exec('/bin/busybox', ['wc', '-l', '/proc/net/ip_vs']);
    if (r.code !== 0) throw new Error(`wc /proc/net/ip_vs in the guest: ${r.stderr.trim()}`);
    return Number(r.stdout.trim().split(/\s+/)[0]) - 3;
  });
}

async function expectRules(n, what) {
  const got = await guestRules();
  if (got !== n) throw new Error(`${what}: the guest has ${got} IPVS rules, expected ${n}`);
}

async function clear() {
  must(await run(CLI, ['ipvs', 'ipvsadm', '--parameters', '--clear', ...SB]), 'ocinet ipvs ipvsadm --parameters --clear');
  await expectRules(0, 'after --clear');
}

// ---------- the rules ----------

const vipOf = (i) => `10.10.${Math.floor(i / 250)}.${(i % 250) + 1}:80`;
const ripOf = (i, k) => `172.17.${k}.${(i % 250) + 1}:${8000 + Math.floor(i / 250)}`;
const LINES = [];
for (let i = 0; i < SERVICES; i++) {
  LINES.push(`-A -t ${vipOf(i)} -s rr -p 3000`);
  for (let k = 1; k <= 3; k++) LINES.push(`-a -t ${vipOf(i)} -r ${ripOf(i, k)} -m`);
}
const FILE = LINES.join('\n') + '\n';

// ---------- the runs ----------

const cleanups = [];

async function main() {
  const started = performance.now();
  const load0 = loadavg()[0];

  // A NIC on 172.16.0.0/15: the guest needs a route to the real servers (172.17.x), else "Invalid operation".
  for (const args of [['link', 'add', BRIDGE, 'type', 'bridge'], ['addr', 'add', '172.16.0.1/15', 'dev', BRIDGE], ['link', 'set', BRIDGE, 'up']]) {
    must(await run('ip', args), `ip ${args.join(' ')}`);
  }
  cleanups.push(async () => { await run('ip', ['link', 'del', BRIDGE]); });
  const iface = '{"device":"tap-ipvsb","name":"eth-ipvs","IPAddresses":[{"address":"172.16.0.3","mask":"15"}],"hwAddr":"02:42:20:6f:a3:72","mtu":1500}';
  let qemuPid = 0;
  const killQemu = async () => {
    if (!qemuPid) return;
    try { process.kill(qemuPid, 'SIGKILL'); } catch {}
    for (let i = 0; i < 100; i++) {
      try { process.kill(qemuPid, 0); } catch { break; }
      await new Promise((r) => setTimeout(r, 20));
    }
    qemuPid = 0;
  };
  cleanups.push(killQemu);
  // Untimed: the same guest sockets, a new kernel with an empty IPVS table and trash.
  const freshGuest = async () => {
    if (qemuPid) {
      must(await run(CLI, ['network', 'del-iface', ...SB, '-'], { input: iface }), 'ocinet network del-iface');
      await killQemu();
    }
    progress('booting a fresh test guest');
    const boot = spawnSync('bash', [join(ROOT, 'build/guest/boot-guest.sh'), GUEST], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 180_000 });
    if (boot.status !== 0) throw new Error(`boot-guest.sh FAILED: ${String(boot.stderr).trim().slice(-500)}`);
    qemuPid = Number(readFileSync(join(GUEST, 'qemu.pid'), 'utf8'));
    must(await run(CLI, ['network', 'add-iface', ...SB, '--bridge', BRIDGE, '-'], { input: iface }), 'ocinet network add-iface');
    await expectRules(0, 'fresh guest');
  };

  const t = { ocinet: [], direct: [], oneByOneMs: null, cliOneByOneMs: null, cliSpacedMs: null, callAgent: null, console: null, nodeStartMs: null, oneByOneEach: [] };
  const tasks = {
    async ocinet() {
      const r = must(await run(CLI, ['ipvs', 'ipvsadm', '--restore', '-', ...SB], { input: FILE }), 'ocinet ipvs ipvsadm --restore');
      if (r.stderr) throw new Error(`ocinet restore wrote to stderr: ${r.stderr.trim().slice(0, 300)}`);
      await expectRules(RULES, 'after ocinet restore');
      t.ocinet.push(r.ms);
    },
    async direct() {
      const ms = await withAgent(async (a) => {
        const t0 = performance.now();
        const r = await a.exec('/usr/sbin/ipvsadm', ['--restore'], FILE);
        const ms = performance.now() - t0;
        if (r.code !== 0) throw new Error(`ipvsadm --restore in the guest FAILED (exit ${r.code}): ${r.stderr.trim().slice(0, 300)}`);
        return ms;
      });
      await expectRules(RULES, 'after direct restore');
      t.direct.push(ms);
    },
  };
  const order = Object.keys(tasks);
  for (let i = 0; i < ROUNDS; i++) {
    // Alternate who goes first.
    for (let j = 0; j < order.length; j++) {
      const k = order[(i + j) % order.length];
      await freshGuest();
      progress(`round ${i + 1}/${ROUNDS}: ${k} restore of ${RULES} rules`);
      await tasks[k]();
    }
  }

  await freshGuest();
  // (b) one ipvsadm per rule through one agent connection (the cheapest way to go rule by rule).
  progress(`(b): ${ONE_BY_ONE} rules one agent exec each`);
  // Each exec's time too: the client's polls (5, 10, 20, 40 ms apart) see ipvsadm end at
  // ~35 or ~75 ms after the agent started it, so one exec takes either ~50 or ~90 ms.
  t.oneByOneMs = await withAgent(async (a) => {
    const t0 = performance.now();
    for (const line of LINES.slice(0, ONE_BY_ONE)) {
      const t1 = performance.now();
      const r = await a.exec('/usr/sbin/ipvsadm', line.split(' '));
      t.oneByOneEach.push(performance.now() - t1);
      if (r.code !== 0) throw new Error(`ipvsadm ${line} FAILED: ${r.stderr.trim()}`);
    }
    return performance.now() - t0;
  });
  await expectRules(ONE_BY_ONE, 'after one-by-one adds');
  await clear();

  // Informational: one `ocinet ipvs ipvsadm --parameters` process per rule, as kata-ipvs users add rules.
  if (CLI_ONE_BY_ONE > 0) {
    progress(`ocinet: ${CLI_ONE_BY_ONE} rules one CLI call each`);
    // Each series starts as a user's first call would: no agent connection held from before.
    const series = async (lines, extra = HOLD, opts = {}) => {
      await noHolder(STATE);
      let ms = 0;
      for (const line of lines) ms += must(await run(CLI, ['ipvs', 'ipvsadm', '--parameters', line, ...SB, ...extra], opts), `ocinet ipvs ipvsadm --parameters "${line}"`).ms;
      return ms;
    };
    const N = CLI_ONE_BY_ONE;
    t.cliOneByOneMs = await series(LINES.slice(0, N));
    await expectRules(N, 'after ocinet one-by-one adds');
    // The same calls spaced: with no client, qemu-ga reads its port every 100 ms, so
    // a call waits for its next read; back to back, every call meets that read at the
    // same phase, which decides up to 100 ms of each. Untimed pauses of 0, 5, ... 95 ms
    // (for 20 calls) spread the calls evenly over the phase: a user's call at any moment.
    progress(`ocinet: ${N} more rules one CLI call each, spaced`);
    await noHolder(STATE);
    let spaced = 0;
    for (const [i, line] of LINES.slice(N, 2 * N).entries()) {
      await new Promise((r) => setTimeout(r, (i * 100) / N));
      spaced += must(await run(CLI, ['ipvs', 'ipvsadm', '--parameters', line, ...SB, ...HOLD]), `ocinet ipvs ipvsadm --parameters "${line}"`).ms;
    }
    t.cliSpacedMs = spaced;
    await expectRules(2 * N, 'after ocinet spaced adds');
    // Info: the default, each call connecting itself (--agent-hold 0), and the calls in the bench's own environment.
    progress(`ocinet: ${N} more rules one CLI call each, by default (no hold)`);
    t.cliNoHoldMs = await series(LINES.slice(2 * N, 3 * N), []);
    progress(`ocinet: ${N} more rules one CLI call each, in the bench's environment`);
    t.cliInheritedMs = await series(LINES.slice(3 * N, 4 * N), HOLD, { env: process.env });
    await expectRules(4 * N, 'after ocinet adds with --agent-hold 0 and in the bench environment');
    // Untimed: a few more adds through the proxy: what each asks of the agent, and where its time goes.
    // Their own state dir: the proxy is another agent socket to ocinet, with holders of its own.
    await noHolder(STATE);
    const proxy = await agentProxy(QGA, join(TMP, 'qga-count.sock'));
    const calls = [];
    try {
      for (let i = 1; i <= 5; i++) {
        proxy.start();
        const r = must(await run(CLI, ['ipvs', 'ipvsadm', '--parameters', `-A -t 10.99.0.${i}:80 -s rr -p 3000`, '--qmp', QMP, '--qga', join(TMP, 'qga-count.sock'), '--state-dir', join(TMP, 'state-count'), ...HOLD]), 'ocinet ipvs ipvsadm through the proxy');
        const n = (pred) => proxy.log.filter(([, w]) => pred(w)).length;
        calls.push({
          connections: n((w) => w === 'connect'), exec: n((w) => w.startsWith('> guest-exec ')), polls: n((w) => w === '> guest-exec-status'),
          other: n((w) => w.startsWith('> ') && !w.startsWith('> guest-exec')), phases: phasesOf(proxy.log, r.ms),
        });
      }
    } finally {
      await noHolder(join(TMP, 'state-count'));
      await proxy.close();
    }
    t.callAgent = calls;
    await clear();

    // Info: the agent on a virtconsole port, one raw exec and one CLI call per service (no
    // real servers: this guest has no NIC), back to back, as above.
    progress('a second guest, its agent on a virtconsole port');
    const CG = join(TMP, 'guest-console');
    const boot = spawnSync('bash', [join(ROOT, 'build/guest/boot-guest.sh'), CG], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 180_000, env: { ...process.env, OCINET_GUEST_AGENT_PORT: 'console' } });
    if (boot.status !== 0) throw new Error(`boot-guest.sh (console) FAILED: ${String(boot.stderr).trim().slice(-500)}`);
    const consolePid = Number(readFileSync(join(CG, 'qemu.pid'), 'utf8'));
    cleanups.push(async () => { try { process.kill(consolePid, 'SIGKILL'); } catch {} });
    const CSB = ['--qmp', join(CG, 'qmp.sock'), '--qga', join(CG, 'qga.sock'), '--state-dir', join(TMP, 'state-console')];
    const rawMs = await withAgent(async (a) => {
      const t0 = performance.now();
      for (let i = 0; i < CLI_ONE_BY_ONE; i++) {
        const r = await a.exec('/usr/sbin/ipvsadm', ['-A', '-t', `10.30.${i >> 8}.${(i & 255) + 1}:80`, '-s', 'rr']);
        if (r.code !== 0) throw new Error(`ipvsadm in the console guest FAILED: ${r.stderr.trim()}`);
      }
      return performance.now() - t0;
    }, join(CG, 'qga.sock'));
    let callMs = 0;
    for (let i = 0; i < CLI_ONE_BY_ONE; i++) {
      callMs += must(await run(CLI, ['ipvs', 'ipvsadm', '--parameters', `-A -t 10.31.${i >> 8}.${(i & 255) + 1}:80 -s rr`, ...CSB, ...HOLD]), 'ocinet ipvs ipvsadm (console guest)').ms;
    }
    t.console = { rawPerRule: rawMs / CLI_ONE_BY_ONE, cliPerRule: callMs / CLI_ONE_BY_ONE };
  }
  // What node's own start costs in this environment (NODE_EXTRA_CA_CERTS, for one, makes it load a CA store).
  const starts = [];
  const inherited = [];
  for (let i = 0; i < 7; i++) {
    starts.push(must(await run(process.execPath, ['-e', '0']), 'node -e 0').ms);
    inherited.push(must(await run(process.execPath, ['-e', '0'], { env: process.env }), 'node -e 0').ms);
  }
  t.nodeStartMs = starts;
  t.nodeStartInheritedMs = inherited;
  progress('');

  // ---------- figures ----------
  const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
  const oc = median(t.ocinet), direct = median(t.direct);
  const perRule = t.oneByOneMs / ONE_BY_ONE;
  const oneByOne = perRule * RULES;
  const restoreRatio = oc / direct;
  const oneByOneRatio = oneByOne / oc;
  const checks = {
    restoreRatio: { value: +restoreRatio.toFixed(3), target: `<= ${TARGETS.restoreRatio}`, pass: restoreRatio <= TARGETS.restoreRatio },
    oneByOneRatio: { value: +oneByOneRatio.toFixed(1), target: `>= ${TARGETS.oneByOneRatio}`, pass: oneByOneRatio >= TARGETS.oneByOneRatio },
  };
  const cliPer = t.cliOneByOneMs !== null ? t.cliOneByOneMs / CLI_ONE_BY_ONE : null;
  const spacedPer = t.cliSpacedMs !== null ? t.cliSpacedMs / CLI_ONE_BY_ONE : null;
  const noHoldPer = t.cliNoHoldMs !== undefined ? t.cliNoHoldMs / CLI_ONE_BY_ONE : null;
  const inheritedPer = t.cliInheritedMs !== undefined ? t.cliInheritedMs / CLI_ONE_BY_ONE : null;
  if (cliPer !== null) {
    const callRatio = cliPer / perRule;
    checks.callRatio = { value: +callRatio.toFixed(2), target: `<= ${TARGETS.callRatio.toFixed(1)}`, pass: callRatio <= TARGETS.callRatio };
  }
  const s = (ms) => (ms / 1000).toFixed(2).padStart(8);
  const row = (label, ms, runs = '') => `  ${label.padEnd(58)}${s(ms)}   ${runs}`;
  console.log(`ocinet ipvs bench: ${RULES} rules (${SERVICES} services x 3 servers) into a TCG test guest; ${ROUNDS} rounds, alternating; ${cpus().length} CPUs; node ${process.version}`);
  console.log(`  ${''.padEnd(58)}${'s'.padStart(8)}   runs (s)`);
  console.log(row('ocinet ipvs ipvsadm --restore (whole CLI, median)', oc, t.ocinet.map((x) => (x / 1000).toFixed(2)).join(' ')));
  console.log(row('(a) ipvsadm --restore in the guest, 1 agent exec (median)', direct, t.direct.map((x) => (x / 1000).toFixed(2)).join(' ')));
  const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))];
  const eachSpread = [0.1, 0.5, 0.9].map((p) => pct(t.oneByOneEach, p).toFixed(0)).join('/');
  console.log(row(`(b) 1 agent exec per rule (${ONE_BY_ONE} timed, scaled to ${RULES})`, oneByOne, `${perRule.toFixed(1)} ms/rule (p10/50/90 ${eachSpread})`));
  if (cliPer !== null) {
    const vsB = (per) => `${per.toFixed(1)} ms/rule = ${(per / perRule).toFixed(2)} x (b)`;
    console.log(row(`1 ocinet ipvs call per rule, --agent-hold 500 (${CLI_ONE_BY_ONE} back to back)`, cliPer * RULES, vsB(cliPer)));
    console.log(row(`(info) the same, spaced 0-95 ms apart`, spacedPer * RULES, vsB(spacedPer)));
    console.log(row(`(info) the same by default (no hold): each call connects`, noHoldPer * RULES, vsB(noHoldPer)));
    console.log(row(`(info) the same, in the bench's own environment${process.env.NODE_EXTRA_CA_CERTS ? ' (CA certs)' : ''}`, inheritedPer * RULES, vsB(inheritedPer)));
  }
  const verdict = (label, c) => `  ${label.padEnd(58)}${String(c.value).padStart(8)}   target ${c.target.padEnd(7)} ${c.pass ? 'PASS' : 'MISS'}`;
  console.log(verdict('ratio ocinet / (a)', checks.restoreRatio));
  console.log(verdict('ratio (b) / ocinet', checks.oneByOneRatio));
  if (checks.callRatio) {
    console.log(verdict('ratio 1 call, --agent-hold 500 / 1 agent exec (b)', checks.callRatio));
    const a = t.callAgent;
    const span = (k) => { const xs = a.map((c) => c[k]); return Math.min(...xs) === Math.max(...xs) ? `${xs[0]}` : `${Math.min(...xs)}-${Math.max(...xs)}`; };
    console.log(`  one ipvsadm call (an add) asks the agent: ${span('connections')} connection(s), ${span('exec')} guest-exec, ${span('polls')} guest-exec-status polls, ${span('other')} other requests (the table's read)`);
    const ph = (k) => median(a.map((c) => c.phases[k])).toFixed(0);
    console.log(`  where its time goes (ms, median of ${a.length}, the first connecting, the rest on its held connection): start to its first request ${ph('start')}, the agent's first reply ${ph('wake')}, to the exec ${ph('beforeExec')}, exec ${ph('exec')}, to exit ${ph('exit')}; total ${ph('total')}`);
    console.log(`  node -e 0: ${median(t.nodeStartMs).toFixed(0)} ms with PATH alone (the calls' environment), ${median(t.nodeStartInheritedMs).toFixed(0)} ms in the bench's own${process.env.NODE_EXTRA_CA_CERTS ? ` (NODE_EXTRA_CA_CERTS=${process.env.NODE_EXTRA_CA_CERTS})` : ''}`);
    const c = t.console;
    console.log(`  (info) agent on a virtconsole port, no 100 ms idle read: 1 call ${c.cliPerRule.toFixed(1)} ms, 1 agent exec ${c.rawPerRule.toFixed(1)} ms = ${(c.cliPerRule / c.rawPerRule).toFixed(2)} x`);
  }

  await cleanupAll();
  const seconds = Math.round((performance.now() - started) / 100) / 10;
  const load1 = loadavg()[0];
  console.log(`ipvs run took ${seconds} s; load average ${load0.toFixed(2)} at start, ${load1.toFixed(2)} at end`);
  const r2 = (x) => Math.round(x * 100) / 100;
  writeFileSync(join(ROOT, 'bench/last-ipvs-run.json'), JSON.stringify({
    date: new Date().toISOString(), rules: RULES, rounds: ROUNDS, oneByOneTimed: ONE_BY_ONE, cliOneByOneTimed: CLI_ONE_BY_ONE,
    cpus: cpus().length, node: process.version, loadavg: { start: r2(load0), end: r2(load1) }, seconds,
    ms: { ocinet: r2(oc), direct: r2(direct), oneByOneExtrapolated: r2(oneByOne), oneByOnePerRule: r2(perRule),
      oneByOneP10P50P90: [0.1, 0.5, 0.9].map((p) => r2(pct(t.oneByOneEach, p))),
      ...(cliPer !== null ? { cliOneByOnePerRule: r2(cliPer), cliSpacedPerRule: r2(spacedPer), cliNoHoldPerRule: r2(noHoldPer), cliInheritedEnvPerRule: r2(inheritedPer) } : {}) },
    ...(t.callAgent ? { callAgentRequests: t.callAgent } : {}),
    ...(t.console ? { consolePort: { cliPerRule: r2(t.console.cliPerRule), rawPerRule: r2(t.console.rawPerRule), ratio: r2(t.console.cliPerRule / t.console.rawPerRule) } } : {}),
    nodeStartMs: t.nodeStartMs.map(r2), nodeStartInheritedEnvMs: t.nodeStartInheritedMs.map(r2),
    checks, samples: { ocinet: t.ocinet.map(r2), direct: t.direct.map(r2) },
  }, null, 1) + '\n');
}

async function cleanupAll() {
  while (cleanups.length) {
    try { await cleanups.pop()(); } catch (e) { console.error(`ipvs bench: cleanup: ${e.message}`); }
  }
  rmSync(TMP, { recursive: true, force: true });
}

main().catch(async (e) => {
  progress('');
  console.error(`\nipvs bench: ${e.message}`);
  await cleanupAll().catch(() => {});
  process.exit(1);
});
