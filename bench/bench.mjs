// ocinet benchmark (make bench). Runs inside the namespace bench/run.sh creates.
// Every figure is the wall time of whole child processes (spawn → exit), as a
// runtime would see it; stand-in sandboxes are created outside the timed region.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

if (process.env.OCINET_BENCH_NS !== '1') throw new Error('run bench/run.sh, not bench.mjs directly');

const ROOT = new URL('..', import.meta.url).pathname.replace(/\/$/, '');
const HOOK = join(ROOT, 'dist/bin/ocinet-hook');
const NODE = readFileSync(HOOK, 'utf8').split('\n')[0].replace(/^#!\s*/, ''); // same node the hook runs on
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 30);
const RESIDENTS = Number(process.env.BENCH_RESIDENTS ?? 200);
const TMP = mkdtempSync(join(tmpdir(), 'ocinet-bench-'));
const CNI_PATH = '/usr/lib/cni';
// Plugins shell out to iptables, so they need a PATH (a real runtime passes its own).
const CNI_BASE_ENV = { CNI_PATH, CNI_IFNAME: 'eth0', PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };
const TARGETS = { ratio: 0.6, loadMs: 5, ownWorkMs: 25, scale: 1.25, nftVsIpt: 1.0 };
// Phase 2's third network: a /27 (29 addresses) that DEAD dead records and the
// rest live residents fill, so that its timed setup must reclaim all DEAD first.
const DEAD = 20;
const DEAD_SUBNET = '10.215.0.0/27';
const DEAD_LIVE = 2 ** (32 - Number(DEAD_SUBNET.split('/')[1])) - 3 - DEAD; // minus network, gateway, broadcast
const DEAD_PORT0 = 9000; // dead record k published DEAD_PORT0 + k (none is 8080)
// Progress on a terminal only, so that logs of `make bench` hold just the report.
const progress = (msg) => process.stderr.isTTY && process.stderr.write(`\r${msg}\x1b[K`);

// ---------- processes ----------

/** Run a program to completion; resolves with its output and wall time in ms. */
function run(file, args, { input = '', env = {} } = {}) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const p = spawn(file, args, { env, timeout: 60_000 });
    let stdout = '', stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, ms: performance.now() - t0 }));
    p.stdin.on('error', () => {}); // a program that ignores stdin may close it first
    p.stdin.end(input);
  });
}

/** Abort loudly unless the run exited 0 and its output passes check: a benchmark of failures is worthless. */
function must(r, what, check = () => true) {
  let ok = false;
  try { ok = r.code === 0 && check(r); } catch {} // e.g. output that is not JSON
  if (ok) return r;
  throw new Error(`${what} FAILED (exit ${r.code ?? r.signal}): ${(r.stderr || r.stdout).trim().slice(0, 500)}`);
}

const sandboxes = new Set();
const myNs = readlinkSync('/proc/self/ns/net');

/** A stand-in container: a sleeping process in a network namespace of its own. */
async function sandbox() {
  const proc = spawn('unshare', ['--net', '--', 'sleep', '3600'], { stdio: 'ignore' });
  sandboxes.add(proc);
  // unshare execs sleep in place: wait until the pid's netns is no longer ours.
  for (let i = 0; ; i++) {
    let ns = '';
    try { ns = readlinkSync(`/proc/${proc.pid}/ns/net`); } catch {}
    if (ns && ns !== myNs) break;
    if (i > 400 || proc.exitCode !== null) throw new Error('sandbox did not start');
    await new Promise((r) => setTimeout(r, 5));
  }
  return proc;
}

function kill(proc) {
  sandboxes.delete(proc);
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((r) => { proc.once('exit', r); proc.kill('SIGKILL'); });
}

/** Run fn over items, n at a time (only for untimed bulk setup/teardown). */
async function pool(items, n, fn) {
  const queue = [...items];
  await Promise.all(Array.from({ length: n }, async () => { while (queue.length) await fn(queue.shift()); }));
}

// ---------- ocinet ----------

const ociState = (id, status, pid) =>
  JSON.stringify({ ociVersion: '1.0.2', id, status, ...(pid ? { pid } : {}), bundle: '/nonexistent' });

/**
 * An ocinet network: a state dir, optionally reached through another netns (nsenter);
 * flags are the hook's own for every stage (e.g. --subnet), as a runtime's hook config gives them.
 */
function ocinet(stateDir, viaPid, flags = []) {
  const cmd = (args) => (viaPid ? ['nsenter', [`--net=/proc/${viaPid}/ns/net`, '--', HOOK, ...args]] : [HOOK, args]);
  return {
    stateDir,
    async setup(id, pid, extra = []) {
      const [file, args] = cmd(['--state-dir', stateDir, ...flags, ...extra]);
      // Empty environment, as runc's "env": [] gives the hook.
      const r = await run(file, args, { input: ociState(id, 'creating', pid) });
      return must(r, `ocinet setup ${id}`, (x) => /^\d+\.\d+\.\d+\.\d+$/.test(JSON.parse(x.stdout).ip));
    },
    async teardown(id) {
      const [file, args] = cmd(['--state-dir', stateDir, ...flags]);
      return must(await run(file, args, { input: ociState(id, 'stopped') }), `ocinet teardown ${id}`);
    },
  };
}

// ---------- CNI (Debian's plugins) ----------

const bridgeConf = {
  cniVersion: '1.0.0', name: 'benchnet', type: 'bridge', bridge: 'cni0', isGateway: true, ipMasq: true,
  ipam: { type: 'host-local', ranges: [[{ subnet: '10.214.0.0/16' }]], dataDir: join(TMP, 'cni-ipam') },
};
const portmapConf = {
  cniVersion: '1.0.0', name: 'benchnet', type: 'portmap', capabilities: { portMappings: true },
  runtimeConfig: { portMappings: [{ hostPort: 8081, containerPort: 80, protocol: 'tcp' }] },
};

function cni(plugin, command, id, pid, conf) {
  const env = { ...CNI_BASE_ENV, CNI_COMMAND: command, CNI_CONTAINERID: id, CNI_NETNS: `/proc/${pid}/ns/net` };
  return run(join(CNI_PATH, plugin), [], { input: JSON.stringify(conf), env });
}
const hasIp = (r) => (JSON.parse(r.stdout).ips ?? []).some((x) => /^\d+\.\d+\.\d+\.\d+\/\d+$/.test(x.address));

/** bridge ADD, portmap ADD (chained on the bridge result), portmap DEL, bridge DEL. */
async function cniLife(id, pid) {
  const addB = must(await cni('bridge', 'ADD', id, pid, bridgeConf), `CNI bridge ADD ${id}`, hasIp);
  const prevResult = JSON.parse(addB.stdout);
  const addP = must(await cni('portmap', 'ADD', id, pid, { ...portmapConf, prevResult }), `CNI portmap ADD ${id}`, hasIp);
  const delP = must(await cni('portmap', 'DEL', id, pid, { ...portmapConf, prevResult }), `CNI portmap DEL ${id}`);
  const delB = must(await cni('bridge', 'DEL', id, pid, { ...bridgeConf, prevResult }), `CNI bridge DEL ${id}`);
  return [addB.ms, addP.ms, delP.ms, delB.ms];
}

// ---------- statistics ----------

function pct(xs, q) {
  const s = [...xs].sort((a, b) => a - b);
  const i = q * (s.length - 1), lo = Math.floor(i);
  return s[lo] + (s[Math.min(lo + 1, s.length - 1)] - s[lo]) * (i - lo);
}
const stat = (xs) => ({ p50: pct(xs, 0.5), p95: pct(xs, 0.95), n: xs.length });
const r1 = (x) => Math.round(x * 10) / 10;
const r2 = (x) => Math.round(x * 100) / 100;

const logRows = (stateDir) => readFileSync(join(stateDir, 'ocinet.log'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));

/** Median of each step the hook logged (JSON lines with a `steps` object) for ids matching re. */
function stepMedians(stateDir, op, re) {
  const rows = logRows(stateDir).filter((e) => e.op === op && e.ok && re.test(e.id));
  const out = { total: r2(pct(rows.map((e) => e.ms), 0.5)) };
  for (const k of Object.keys(rows[0]?.steps ?? {})) out[k] = r2(pct(rows.map((e) => e.steps[k] ?? 0), 0.5));
  return out;
}

// ---------- the run ----------

const cleanups = []; // run in reverse at the end, also after a failure

async function main() {
  const started = performance.now();
  const load0 = loadavg()[0];
  const t = { oci: [], ociSetup: [], ociTeardown: [], ipt: [], iptSetup: [], iptTeardown: [], ds: [], dsSetup: [], dsTeardown: [], cni: [], cniSteps: [[], [], [], []], version: [], node0: [], one: [], many: [], dead: [] };

  // Phase 1: ocinet vs CNI, with --version and `node -e 0` in the same rounds, so
  // that the "load" and "own work" differences compare runs made side by side.
  // The default backend (nftables here), and the iptables one on a network of its own.
  const oc = ocinet(join(TMP, 'ocinet'), undefined, ['--firewall', 'nftables']);
  const resA = await sandbox();
  await oc.setup('resident-a', resA.pid);
  cleanups.push(() => oc.teardown('resident-a'));
  const ocI = ocinet(join(TMP, 'ocinet-ipt'), undefined, ['--firewall', 'iptables', '--bridge', 'ocipt0', '--subnet', '10.216.0.0/16']);
  const resI = await sandbox();
  await ocI.setup('resident-i', resI.pid);
  cleanups.push(() => ocI.teardown('resident-i'));
  // Dual stack on nftables: the same life with an IPv6 address, route and DNAT entry as well.
  const ocD = ocinet(join(TMP, 'ocinet-ds'), undefined, ['--firewall', 'nftables', '--bridge', 'ocds0', '--subnet', '10.217.0.0/16', '--subnet6', 'fd00:217::/64']);
  const resD = await sandbox();
  await ocD.setup('resident-d', resD.pid);
  cleanups.push(() => ocD.teardown('resident-d'));
  const resB = await sandbox();
  const resBAdd = must(await cni('bridge', 'ADD', 'resident-b', resB.pid, bridgeConf), 'CNI resident ADD', hasIp);
  cleanups.push(async () => must(await cni('bridge', 'DEL', 'resident-b', resB.pid, { ...bridgeConf, prevResult: JSON.parse(resBAdd.stdout) }), 'CNI resident DEL'));

  const tasks = {
    async ocinet(i, timed) {
      const sb = await sandbox();
      const s = await oc.setup(`bench-a-${i}`, sb.pid, ['--publish', '8080:80']);
      const d = await oc.teardown(`bench-a-${i}`);
      await kill(sb);
      if (timed) { t.oci.push(s.ms + d.ms); t.ociSetup.push(s.ms); t.ociTeardown.push(d.ms); }
    },
    async dualStack(i, timed) {
      const sb = await sandbox();
      const s = await ocD.setup(`bench-d-${i}`, sb.pid, ['--publish', '8080:80']);
      const d = await ocD.teardown(`bench-d-${i}`);
      await kill(sb);
      if (timed) { t.ds.push(s.ms + d.ms); t.dsSetup.push(s.ms); t.dsTeardown.push(d.ms); }
    },
    async iptables(i, timed) {
      const sb = await sandbox();
      const s = await ocI.setup(`bench-i-${i}`, sb.pid, ['--publish', '8080:80']);
      const d = await ocI.teardown(`bench-i-${i}`);
      await kill(sb);
      if (timed) { t.ipt.push(s.ms + d.ms); t.iptSetup.push(s.ms); t.iptTeardown.push(d.ms); }
    },
    async cni(i, timed) {
      const sb = await sandbox();
      const steps = await cniLife(`bench-b-${i}`, sb.pid);
      await kill(sb);
      if (timed) { t.cni.push(steps.reduce((a, b) => a + b)); steps.forEach((ms, k) => t.cniSteps[k].push(ms)); }
    },
    async version(_i, timed) {
      const r = must(await run(HOOK, ['--version']), 'ocinet-hook --version', (x) => /\d/.test(x.stdout));
      if (timed) t.version.push(r.ms);
    },
    async node0(_i, timed) {
      const r = must(await run(NODE, ['-e', '0']), 'node -e 0');
      if (timed) t.node0.push(r.ms);
    },
  };
  const order = Object.keys(tasks);
  for (const k of order) await tasks[k]('warm', false); // page cache, first bridge/chain creation
  for (let i = 0; i < ROUNDS; i++) {
    // Rotate who goes first, so neither side always runs right after the other.
    for (let j = 0; j < order.length; j++) await tasks[order[(i + j) % order.length]](i, true);
    progress(`phase 1: round ${i + 1}/${ROUNDS}`);
  }
  progress('');

  // Phase 2: setup cost with 1 vs RESIDENTS live containers on the bridge, and with
  // DEAD dead records in the way. Each network lives in a netns of its own (entered
  // with nsenter, the same for all) so that they can alternate without one host's
  // size slowing another.
  const nets = [];
  for (const [name, n, flags] of [['one', 1, []], ['many', RESIDENTS, []], ['dead', DEAD_LIVE, ['--subnet', DEAD_SUBNET]]]) {
    const holder = await sandbox();
    const net = ocinet(join(TMP, `ocinet-${name}`), holder.pid, flags);
    const residents = [];
    for (let i = 0; i < n; i++) residents.push({ id: `res-${name}-${i}`, sb: await sandbox() });
    let done = 0;
    await pool(residents, 3, async (r) => {
      await net.setup(r.id, r.sb.pid);
      progress(`phase 2: ${name}: ${++done}/${n} residents set up`);
    });
    cleanups.push(() => pool(residents, 3, (r) => net.teardown(r.id)));
    nets.push({ name, net, holder });
  }
  const deadNet = nets[2];

  /** Host links in a network's holder netns. */
  const linksOf = async (holder) => {
    const r = must(await run('nsenter', [`--net=/proc/${holder.pid}/ns/net`, '--', 'ip', '-j', 'link', 'show']), 'ip link show', (x) => Array.isArray(JSON.parse(x.stdout)));
    return new Set(JSON.parse(r.stdout).map((l) => l.ifname));
  };

  /**
   * Untimed: fill the dead network's pool with DEAD containers (each publishing a port
   * of its own), then kill their sandboxes without teardown, as failed starts leave
   * them. Returns the timed container's sandbox, made while the dead still hold their
   * namespaces: a freed netns inode comes back at once, and a record claiming the
   * timed container's inode would be reclaimed for that, not for the full pool.
   */
  async function makeDead(i) {
    const { net, holder } = deadNet;
    const dead = Array.from({ length: DEAD }, (_, k) => ({ id: `dead-${i}-${k}`, port: DEAD_PORT0 + k }));
    await pool(dead, 4, async (d) => {
      d.sb = await sandbox();
      await net.setup(d.id, d.sb.pid, ['--publish', `${d.port}:80`]);
    });
    const sb = await sandbox();
    const state = JSON.parse(readFileSync(join(net.stateDir, 'state.json'), 'utf8'));
    const veths = dead.map((d) => state.containers[d.id]?.hostVeth);
    if (veths.some((v) => !v)) throw new Error(`dead records: ${dead.length} set up but not all recorded with a host veth`);
    await Promise.all(dead.map((d) => kill(d.sb)));
    // Wait until the kernel has destroyed their namespaces (and so their veths), so that
    // the timed setup meets what a dead container leaves, not the kernel still at work.
    for (let k = 0; ; k++) {
      const links = await linksOf(holder);
      if (!veths.some((v) => links.has(v))) break;
      if (k > 500) throw new Error('dead records: their veths did not go within 10 s of their sandboxes\' death');
      await new Promise((r) => setTimeout(r, 20));
    }
    return { sb, dead };
  }

  /** The timed setup must have reclaimed exactly this round's DEAD records, for the full pool. */
  function checkReclaimed(id, dead) {
    const rows = logRows(deadNet.net.stateDir).filter((e) => e.op === 'reclaim' && e.by === id);
    const want = new Set(dead.map((d) => d.id));
    const ok = rows.length === DEAD && rows.every((e) => e.ok && want.delete(e.id) && /^address pool .* full/.test(e.why)) && want.size === 0;
    if (!ok) {
      const got = rows.map((e) => `${e.id}${e.ok ? '' : ' (failed)'}: ${e.why}`).join('; ').slice(0, 500);
      throw new Error(`setup ${id} FAILED to reclaim the ${DEAD} dead records in its way (pool full): it logged ${rows.length} reclaims${got ? `: ${got}` : ''}`);
    }
  }

  const timedLife = async ({ name, net }, i, timed) => {
    const id = `bench-${name}-${i}`;
    const pre = name === 'dead' ? await makeDead(i) : { sb: await sandbox() };
    const s = await net.setup(id, pre.sb.pid, ['--publish', '8080:80']);
    if (pre.dead) checkReclaimed(id, pre.dead);
    await net.teardown(id);
    await kill(pre.sb);
    if (timed) t[name].push(s.ms);
  };
  for (const n of nets) await timedLife(n, 'warm', false);
  for (let i = 0; i < ROUNDS; i++) {
    for (let j = 0; j < nets.length; j++) await timedLife(nets[(i + j) % nets.length], i, true);
    progress(`phase 2: round ${i + 1}/${ROUNDS}`);
  }
  progress('');

  // ---------- figures ----------
  const S = {
    ocinet: stat(t.oci), ocinetSetup: stat(t.ociSetup), ocinetTeardown: stat(t.ociTeardown), cni: stat(t.cni),
    iptables: stat(t.ipt), iptablesSetup: stat(t.iptSetup), iptablesTeardown: stat(t.iptTeardown),
    dualStack: stat(t.ds), dualStackSetup: stat(t.dsSetup), dualStackTeardown: stat(t.dsTeardown),
    cniSteps: Object.fromEntries(['bridgeAdd', 'portmapAdd', 'portmapDel', 'bridgeDel'].map((k, i) => [k, stat(t.cniSteps[i])])),
    version: stat(t.version), node0: stat(t.node0), setupOne: stat(t.one), setupMany: stat(t.many),
    setupDead: stat(t.dead),
  };
  const ratio = S.ocinet.p50 / S.cni.p50;
  const load = S.version.p50 - S.node0.p50;
  const own = S.ocinetSetup.p50 - S.version.p50;
  const scale = S.setupMany.p50 / S.setupOne.p50;
  const checks = {
    ratio: { value: +ratio.toFixed(3), target: `<= ${TARGETS.ratio}`, pass: ratio <= TARGETS.ratio },
    loadMs: { value: +load.toFixed(3), target: `<= ${TARGETS.loadMs} ms`, pass: load <= TARGETS.loadMs },
    ownWorkMs: { value: +own.toFixed(3), target: `<= ${TARGETS.ownWorkMs} ms`, pass: own <= TARGETS.ownWorkMs },
    scale: { value: +scale.toFixed(3), target: `<= ${TARGETS.scale}x`, pass: scale <= TARGETS.scale },
    nftVsIpt: { value: +(S.ocinet.p50 / S.iptables.p50).toFixed(3), target: `<= ${TARGETS.nftVsIpt}`, pass: S.ocinet.p50 / S.iptables.p50 <= TARGETS.nftVsIpt },
  };
  // No target: what reclaiming costs a setup that meets DEAD dead records (its network
  // also has DEAD_LIVE live residents, against 1).
  const deadScale = S.setupDead.p50 / S.setupOne.p50;
  const perReclaim = (S.setupDead.p50 - S.setupOne.p50) / DEAD;
  const info = {
    deadScale: { value: +deadScale.toFixed(3), what: `setup with ${DEAD} dead in the way / setup at 1 (p50)` },
    perReclaimMs: { value: +perReclaim.toFixed(3), what: `(setup with ${DEAD} dead - setup at 1) / ${DEAD} (p50, ms)` },
  };
  const steps = {
    setup: stepMedians(oc.stateDir, 'setup', /^bench-a-\d+$/),
    teardown: stepMedians(oc.stateDir, 'teardown', /^bench-a-\d+$/),
    setupIpt: stepMedians(ocI.stateDir, 'setup', /^bench-i-\d+$/),
    teardownIpt: stepMedians(ocI.stateDir, 'teardown', /^bench-i-\d+$/),
    setupOne: stepMedians(nets[0].net.stateDir, 'setup', /^bench-one-\d+$/),
    setupMany: stepMedians(nets[1].net.stateDir, 'setup', /^bench-many-\d+$/),
    setupDead: stepMedians(deadNet.net.stateDir, 'setup', /^bench-dead-\d+$/),
  };

  const W = 54;
  const row = (label, s) => `  ${label.padEnd(W)}${r1(s.p50).toFixed(1).padStart(8)}${r1(s.p95).toFixed(1).padStart(9)}`;
  const verdict = (label, c) => `  ${label.padEnd(W)}${c.value.toFixed(c.target.endsWith('ms') ? 2 : 3).padStart(8)}   target ${c.target.padEnd(10)} ${c.pass ? 'PASS' : 'MISS'}`;
  const informative = (label, v, digits) => `  ${label.padEnd(W)}${v.toFixed(digits).padStart(8)}   info`;
  const fmtSteps = (o) => Object.entries(o).map(([k, v]) => `${k} ${v}`).join(', ');
  console.log(`ocinet bench: ${ROUNDS} rounds each, alternating; ${cpus().length} CPUs; node ${process.version}`);
  console.log(`  ${''.padEnd(W)}${'p50 ms'.padStart(8)}${'p95 ms'.padStart(9)}`);
  console.log(row('ocinet setup+teardown, nftables (1 port, 1 resident)', S.ocinet));
  console.log(row('  setup', S.ocinetSetup));
  console.log(row('  teardown', S.ocinetTeardown));
  console.log(row('ocinet setup+teardown, iptables (1 port, 1 resident)', S.iptables));
  console.log(row('  setup', S.iptablesSetup));
  console.log(row('  teardown', S.iptablesTeardown));
  console.log(row('ocinet setup+teardown, dual stack on nftables', S.dualStack));
  console.log(row('  setup', S.dualStackSetup));
  console.log(row('  teardown', S.dualStackTeardown));
  console.log(row('CNI bridge+portmap ADD, DEL (1 resident)', S.cni));
  for (const [k, s] of Object.entries(S.cniSteps)) console.log(row(`  ${k}`, s));
  console.log(row('ocinet-hook --version', S.version));
  console.log(row('node -e 0', S.node0));
  console.log(row(`ocinet setup, 1 resident (via nsenter)`, S.setupOne));
  console.log(row(`ocinet setup, ${RESIDENTS} residents (via nsenter)`, S.setupMany));
  console.log(row(`ocinet setup, ${DEAD} dead records in the way (via nsenter)`, S.setupDead));
  console.log(verdict('ratio ocinet/CNI (p50; nftables, the default)', checks.ratio));
  console.log(verdict('ratio nftables/iptables lifecycle (p50)', checks.nftVsIpt));
  console.log(informative('ratio dual stack / IPv4 only, nftables (p50)', S.dualStack.p50 / S.ocinet.p50, 3));
  console.log(verdict('bundle load: --version - node -e 0', checks.loadMs));
  console.log(verdict('own work: setup - --version', checks.ownWorkMs));
  console.log(verdict(`setup with ${RESIDENTS} live / setup at 1`, checks.scale));
  console.log(informative(`setup with ${DEAD} dead in the way / setup at 1`, info.deadScale.value, 3));
  console.log(informative(`  per reclaim: (dead - at 1) / ${DEAD}, ms`, info.perReclaimMs.value, 2));
  console.log(`ocinet's own step timings (median ms, from its log):`);
  for (const [k, v] of Object.entries(steps)) console.log(`  ${k.padEnd(10)} ${fmtSteps(v)}`);

  // Clean up before reporting the duration and load, so they cover the whole job.
  await cleanupAll();
  const seconds = r1((performance.now() - started) / 1000);
  const load1 = loadavg()[0];
  console.log(`run took ${seconds} s; load average ${load0.toFixed(2)} at start, ${load1.toFixed(2)} at end`);

  const round = (o) => JSON.parse(JSON.stringify(o, (_k, v) => (typeof v === 'number' ? r2(v) : v)));
  writeFileSync(join(ROOT, 'bench/last-run.json'), JSON.stringify({
    date: new Date().toISOString(), rounds: ROUNDS, residents: RESIDENTS, cpus: cpus().length, node: process.version,
    loadavg: { start: r2(load0), end: r2(load1) }, seconds,
    dead: { records: DEAD, liveResidents: DEAD_LIVE, subnet: DEAD_SUBNET },
    ms: round(S), checks, info, ocinetSteps: steps, samples: round(t),
  }, null, 1) + '\n');
}

async function cleanupAll() {
  let failed = false;
  while (cleanups.length) {
    try { await cleanups.pop()(); } catch (e) { failed = true; console.error(`bench: cleanup: ${e.message}`); }
  }
  await Promise.all([...sandboxes].map(kill));
  rmSync(TMP, { recursive: true, force: true });
  if (failed) throw new Error('cleanup FAILED');
}

main().catch(async (e) => {
  console.error(`\nbench: ${e.message}`);
  await cleanupAll().catch(() => {});
  process.exit(1);
});
