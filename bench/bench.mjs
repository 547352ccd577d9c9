// ocinet benchmark (make bench). Runs inside the namespace bench/run.sh creates.
// Every figure is the wall time of whole child processes (spawn → exit), as a
// runtime would see it; stand-in sandboxes are created outside the timed region.
// Three sides do the same job (a bridge network, one published port, one other
// container resident on the bridge): ocinet's hook, Debian's CNI chain
// (bridge + host-local + portmap) and Debian's netavark (Podman's backend), each
// on a bridge and subnet of its own, in two orders: teardown while the stand-in
// container still runs, and the real poststop order (runc calls poststop after
// the container's processes are dead: the stand-in is killed first).
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
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
// Plugins and netavark shell out to iptables, so they need a PATH (a real runtime passes its own).
const PATH = '/usr/sbin:/usr/bin:/sbin:/bin';
const CNI_BASE_ENV = { CNI_PATH, CNI_IFNAME: 'eth0', PATH };
const NETAVARK = '/usr/lib/podman/netavark';
const OCINET_CNI = join(ROOT, 'dist/bin/ocinet-cni');
// ratio: ocinet/CNI; netavark: ocinet/netavark; ownWorkMs: setup's and teardown's own work
// (wall time minus --version's) in the poststop order (issue 13; it was 25 ms for setup).
const TARGETS = { ratio: 0.6, netavark: 0.7, loadMs: 5, ownWorkMs: 15, scale: 1.25, nftVsIpt: 1.0 };
/** The two orders of a life: teardown while the container runs, and after it died (runc's poststop). */
const ORDERS = ['alive', 'poststop'];
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
    /** As runc gives poststop its state: status stopped and no pid (the process may be gone). */
    async teardown(id) {
      const [file, args] = cmd(['--state-dir', stateDir, ...flags]);
      return must(await run(file, args, { input: ociState(id, 'stopped') }), `ocinet teardown ${id}`, () => !(id in JSON.parse(readFileSync(join(stateDir, 'state.json'), 'utf8')).containers));
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

/** One plugin call; `netns` is CNI_NETNS (empty at a DEL after the container died, as the spec allows). */
function cni(plugin, command, id, netns, conf) {
  const env = { ...CNI_BASE_ENV, CNI_COMMAND: command, CNI_CONTAINERID: id, CNI_NETNS: netns };
  return run(join(CNI_PATH, plugin), [], { input: JSON.stringify(conf), env });
}
const hasIp = (r) => (JSON.parse(r.stdout).ips ?? []).some((x) => /^\d+\.\d+\.\d+\.\d+\/\d+$/.test(x.address));

/**
 * bridge ADD, portmap ADD (chained on the bridge result), portmap DEL, bridge DEL.
 * In the poststop order the container is dead before the DELs and CNI_NETNS is
 * empty (the spec lets a runtime pass none when the namespace is gone; `ctr run
 * --cni` does so): Debian's bridge plugin (1.1.1) then only releases the address
 * and leaves its ipMasq chain behind, which is removed here, untimed.
 */
async function cniLife(id, sb, order) {
  const netns = `/proc/${sb.pid}/ns/net`;
  const addB = must(await cni('bridge', 'ADD', id, netns, bridgeConf), `CNI bridge ADD ${id}`, hasIp);
  const prevResult = JSON.parse(addB.stdout);
  const addP = must(await cni('portmap', 'ADD', id, netns, { ...portmapConf, prevResult }), `CNI portmap ADD ${id}`, hasIp);
  if (order === 'poststop') await kill(sb);
  const delNs = order === 'poststop' ? '' : netns;
  const delP = must(await cni('portmap', 'DEL', id, delNs, { ...portmapConf, prevResult }), `CNI portmap DEL ${id}`);
  const delB = must(await cni('bridge', 'DEL', id, delNs, { ...bridgeConf, prevResult }), `CNI bridge DEL ${id}`);
  if (order === 'poststop') await dropLeakedMasq(id);
  return [addB.ms, addP.ms, delP.ms, delB.ms];
}

/** The bridge plugin's ipMasq rules for container `id` (its comment names the id), removed when a DEL left them. */
async function dropLeakedMasq(id) {
  const tag = `--comment "name: \\"${bridgeConf.name}\\" id: \\"${id}\\""`;
  const saved = must(await run('iptables-save', ['-t', 'nat'], { env: { PATH } }), 'iptables-save -t nat');
  const jumps = saved.stdout.split('\n').filter((l) => l.startsWith('-A POSTROUTING ') && l.includes(tag));
  if (!jumps.length) return;
  const chains = jumps.map((l) => l.slice(l.lastIndexOf(' -j ') + 4));
  const input = ['*nat', ...jumps.map((l) => l.replace(/^-A/, '-D')), ...chains.flatMap((c) => [`-F ${c}`, `-X ${c}`]), 'COMMIT', ''].join('\n');
  must(await run('iptables-restore', ['--noflush'], { input, env: { PATH } }), `removing CNI's leaked ipMasq chain of ${id}`);
}

// ---------- netavark (Podman's network backend; Debian's 1.4, iptables driver) ----------

const sha256 = (s) => createHash('sha256').update(s).digest('hex');
const NV_CONFIG = join(TMP, 'netavark');
const NV_NET = 'benchnv';
const nvNetwork = {
  name: NV_NET, id: sha256(NV_NET), driver: 'bridge', network_interface: 'nvbr0',
  subnets: [{ subnet: '10.218.0.0/16', gateway: '10.218.0.1' }],
  ipv6_enabled: false, internal: false, dns_enabled: false, ipam_options: { driver: 'host-local' },
};
/** Podman's addresses come from its own IPAM and reach netavark as static_ips; here, handed out in turn as host-local does. */
let nvNext = 0;
const nvAddress = () => `10.218.${1 + Math.floor(nvNext / 250)}.${2 + (nvNext++ % 250)}`;

/** netavark's options for one container, as Podman writes them (ports: host 8082 to 80/tcp). */
function nvOptions(name, ip, ports = true) {
  return {
    container_id: sha256(name), container_name: name,
    port_mappings: ports ? [{ host_ip: '', container_port: 80, host_port: 8082, range: 1, protocol: 'tcp' }] : [],
    networks: { [NV_NET]: { static_ips: [ip], interface_name: 'eth0' } },
    network_info: { [NV_NET]: nvNetwork },
  };
}

function netavark(command, nsPath, opts) {
  return run(NETAVARK, ['--config', NV_CONFIG, command, nsPath], { input: JSON.stringify(opts), env: { PATH } });
}
const nvSetUp = (ip) => (r) => JSON.parse(r.stdout)[NV_NET].interfaces.eth0.subnets.some((x) => x.ipnet === `${ip}/16`);

/**
 * Podman keeps a container's network namespace bind-mounted (/run/netns/netns-…)
 * and gives netavark that path; at a container's exit it tears the network down
 * with it, after the container's processes are dead, and unmounts it afterwards.
 * The poststop order does the same: the namespace is bind-mounted (untimed)
 * before the stand-in dies, so netavark's teardown finds it, with the veth still
 * in it, as under Podman.
 */
async function nvPin(pid, name) {
  const path = join(NV_CONFIG, 'netns', name);
  writeFileSync(path, '');
  must(await run('mount', ['--bind', `/proc/${pid}/ns/net`, path], { env: { PATH } }), `mount --bind netns of ${name}`);
  return {
    path,
    async release() {
      must(await run('umount', [path], { env: { PATH } }), `umount ${path}`);
      rmSync(path);
    },
  };
}

/** One netavark life: setup of /proc/PID/ns/net, teardown of it or, after the container died, of Podman's bind mount. */
async function netavarkLife(name, sb, order) {
  const ip = nvAddress();
  const opts = nvOptions(name, ip);
  const pin = order === 'poststop' ? await nvPin(sb.pid, name) : null;
  const s = must(await netavark('setup', `/proc/${sb.pid}/ns/net`, opts), `netavark setup ${name}`, nvSetUp(ip));
  if (pin) await kill(sb);
  const d = must(await netavark('teardown', pin ? pin.path : `/proc/${sb.pid}/ns/net`, opts), `netavark teardown ${name}`);
  await pin?.release();
  return [s.ms, d.ms];
}

// ---------- ocinet-cni (the same core as a CNI plugin) ----------

const ocniConf = {
  cniVersion: '1.0.0', name: 'benchoc', type: 'ocinet', bridge: 'occni0', subnet: '10.219.0.0/16', stateDir: join(TMP, 'ocinet-cni'),
  firewall: 'nftables', capabilities: { portMappings: true },
};
const ocniPorts = { runtimeConfig: { portMappings: [{ hostPort: 8083, containerPort: 80, protocol: 'tcp' }] } };

function ocni(command, id, netns, conf) {
  const env = { ...CNI_BASE_ENV, CNI_COMMAND: command, CNI_CONTAINERID: id, CNI_NETNS: netns };
  return run(OCINET_CNI, [], { input: JSON.stringify(conf), env });
}
const ocniGone = (id) => () => !(`${id}/eth0` in JSON.parse(readFileSync(join(ocniConf.stateDir, 'state.json'), 'utf8')).containers);

/** ADD then DEL with one port mapping, as the CNI side does (poststop: DEL with no netns after the container died, as ctr sends it). */
async function ocniLife(id, sb, order) {
  const netns = `/proc/${sb.pid}/ns/net`;
  const conf = { ...ocniConf, ...ocniPorts };
  const add = must(await ocni('ADD', id, netns, conf), `ocinet-cni ADD ${id}`, hasIp);
  if (order === 'poststop') await kill(sb);
  const del = must(await ocni('DEL', id, order === 'poststop' ? '' : netns, { ...conf, prevResult: JSON.parse(add.stdout) }), `ocinet-cni DEL ${id}`, ocniGone(id));
  return [add.ms, del.ms];
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
  const lives = () => ({ life: [], setup: [], teardown: [] });
  // t.ocinet/cni/netavark: the three sides in both orders, ORDERS' keys.
  const t = {
    ocinet: { alive: lives(), poststop: lives() }, cni: { alive: lives(), poststop: lives() }, netavark: { alive: lives(), poststop: lives() },
    ocinetCni: { alive: lives(), poststop: lives() },
    ipt: lives(), ds: lives(), cniSteps: { alive: [[], [], [], []], poststop: [[], [], [], []] }, version: [], node0: [], one: [], many: [], dead: [],
  };
  const push = (into, s, d) => { into.life.push(s + d); into.setup.push(s); into.teardown.push(d); };

  // Phase 1: ocinet vs CNI vs netavark, with --version and `node -e 0` in the same
  // rounds, so that the "load" and "own work" differences compare runs made side by
  // side. ocinet's default backend (nftables here), the iptables one and a dual
  // stack network, each on a network of its own. Every side has its own bridge,
  // subnet and published host port, and one resident container on its bridge.
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
  const resBNs = `/proc/${resB.pid}/ns/net`;
  const resBAdd = must(await cni('bridge', 'ADD', 'resident-b', resBNs, bridgeConf), 'CNI resident ADD', hasIp);
  cleanups.push(async () => must(await cni('bridge', 'DEL', 'resident-b', resBNs, { ...bridgeConf, prevResult: JSON.parse(resBAdd.stdout) }), 'CNI resident DEL'));
  mkdirSync(join(NV_CONFIG, 'netns'), { recursive: true });
  const resN = await sandbox();
  const resNOpts = nvOptions('resident-n', '10.218.0.2', false);
  must(await netavark('setup', `/proc/${resN.pid}/ns/net`, resNOpts), 'netavark resident setup', nvSetUp('10.218.0.2'));
  cleanups.push(async () => must(await netavark('teardown', `/proc/${resN.pid}/ns/net`, resNOpts), 'netavark resident teardown'));
  const resC = await sandbox();
  const resCNs = `/proc/${resC.pid}/ns/net`;
  must(await ocni('ADD', 'resident-c', resCNs, ocniConf), 'ocinet-cni resident ADD', hasIp);
  cleanups.push(async () => must(await ocni('DEL', 'resident-c', resCNs, ocniConf), 'ocinet-cni resident DEL'));

  /** A life of a side's own (setup, teardown in `order`), timed: [setup ms, teardown ms]. */
  const ocinetLife = async (net, id, order) => {
    const sb = await sandbox();
    const s = await net.setup(id, sb.pid, ['--publish', '8080:80']);
    if (order === 'poststop') await kill(sb);
    const d = await net.teardown(id);
    await kill(sb);
    return [s.ms, d.ms];
  };
  const tasks = {
    version: async (_i, timed) => {
      const r = must(await run(HOOK, ['--version']), 'ocinet-hook --version', (x) => /\d/.test(x.stdout));
      if (timed) t.version.push(r.ms);
    },
    node0: async (_i, timed) => {
      const r = must(await run(NODE, ['-e', '0']), 'node -e 0');
      if (timed) t.node0.push(r.ms);
    },
    dualStack: async (i, timed) => {
      const [s, d] = await ocinetLife(ocD, `bench-d-${i}`, 'alive');
      if (timed) push(t.ds, s, d);
    },
    iptables: async (i, timed) => {
      const [s, d] = await ocinetLife(ocI, `bench-i-${i}`, 'alive');
      if (timed) push(t.ipt, s, d);
    },
  };
  for (const o of ORDERS) {
    const tag = o === 'alive' ? '' : 'p';
    tasks[`ocinet-${o}`] = async (i, timed) => {
      const [s, d] = await ocinetLife(oc, `bench-a${tag}-${i}`, o);
      if (timed) push(t.ocinet[o], s, d);
    };
    tasks[`cni-${o}`] = async (i, timed) => {
      const sb = await sandbox();
      const steps = await cniLife(`bench-b${tag}-${i}`, sb, o);
      await kill(sb);
      if (timed) { push(t.cni[o], steps[0] + steps[1], steps[2] + steps[3]); steps.forEach((ms, k) => t.cniSteps[o][k].push(ms)); }
    };
    tasks[`ocinet-cni-${o}`] = async (i, timed) => {
      const sb = await sandbox();
      const [s, d] = await ocniLife(`bench-c${tag}-${i}`, sb, o);
      await kill(sb);
      if (timed) push(t.ocinetCni[o], s, d);
    };
    tasks[`netavark-${o}`] = async (i, timed) => {
      const sb = await sandbox();
      const [s, d] = await netavarkLife(`bench-n${tag}-${i}`, sb, o);
      await kill(sb);
      if (timed) push(t.netavark[o], s, d);
    };
  }
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
  const lifeStats = (x) => ({ life: stat(x.life), setup: stat(x.setup), teardown: stat(x.teardown) });
  const bothOrders = (x) => Object.fromEntries(ORDERS.map((o) => [o, lifeStats(x[o])]));
  const S = {
    ocinet: bothOrders(t.ocinet), cni: bothOrders(t.cni), netavark: bothOrders(t.netavark), ocinetCni: bothOrders(t.ocinetCni),
    iptables: lifeStats(t.ipt), dualStack: lifeStats(t.ds),
    cniSteps: Object.fromEntries(ORDERS.map((o) => [o, Object.fromEntries(['bridgeAdd', 'portmapAdd', 'portmapDel', 'bridgeDel'].map((k, i) => [k, stat(t.cniSteps[o][i])]))])),
    version: stat(t.version), node0: stat(t.node0), setupOne: stat(t.one), setupMany: stat(t.many),
    setupDead: stat(t.dead),
  };
  const check = (value, target, unit = '') => ({ value: +value.toFixed(3), target: `<= ${target}${unit}`, pass: value <= target });
  const vs = (peer, o) => S.ocinet[o].life.p50 / S[peer][o].life.p50;
  const load = S.version.p50 - S.node0.p50;
  // Own work: what a hook run costs beyond starting node and loading the bundle.
  const own = (o, stage) => S.ocinet[o][stage].p50 - S.version.p50;
  const scale = S.setupMany.p50 / S.setupOne.p50;
  const checks = {
    ratio: check(vs('cni', 'alive'), TARGETS.ratio),
    ratioPoststop: check(vs('cni', 'poststop'), TARGETS.ratio),
    netavark: check(vs('netavark', 'alive'), TARGETS.netavark),
    netavarkPoststop: check(vs('netavark', 'poststop'), TARGETS.netavark),
    cniPlugin: check(S.ocinetCni.alive.life.p50 / S.cni.alive.life.p50, TARGETS.ratio),
    cniPluginPoststop: check(S.ocinetCni.poststop.life.p50 / S.cni.poststop.life.p50, TARGETS.ratio),
    nftVsIpt: check(S.ocinet.alive.life.p50 / S.iptables.life.p50, TARGETS.nftVsIpt),
    loadMs: check(load, TARGETS.loadMs, ' ms'),
    ownSetupMs: check(own('poststop', 'setup'), TARGETS.ownWorkMs, ' ms'),
    ownTeardownMs: check(own('poststop', 'teardown'), TARGETS.ownWorkMs, ' ms'),
    scale: check(scale, TARGETS.scale, 'x'),
  };
  // No target: what reclaiming costs a setup that meets DEAD dead records (its network
  // also has DEAD_LIVE live residents, against 1).
  const deadScale = S.setupDead.p50 / S.setupOne.p50;
  const perReclaim = (S.setupDead.p50 - S.setupOne.p50) / DEAD;
  const info = {
    deadScale: { value: +deadScale.toFixed(3), what: `setup with ${DEAD} dead in the way / setup at 1 (p50)` },
    perReclaimMs: { value: +perReclaim.toFixed(3), what: `(setup with ${DEAD} dead - setup at 1) / ${DEAD} (p50, ms)` },
    ownAliveSetupMs: { value: +own('alive', 'setup').toFixed(3), what: 'setup - --version, teardown while the container runs (p50, ms)' },
    ownAliveTeardownMs: { value: +own('alive', 'teardown').toFixed(3), what: 'teardown - --version, while the container runs (p50, ms)' },
  };
  const steps = {
    setup: stepMedians(oc.stateDir, 'setup', /^bench-a-\d+$/),
    teardown: stepMedians(oc.stateDir, 'teardown', /^bench-a-\d+$/),
    setupPoststop: stepMedians(oc.stateDir, 'setup', /^bench-ap-\d+$/),
    teardownPoststop: stepMedians(oc.stateDir, 'teardown', /^bench-ap-\d+$/),
    setupIpt: stepMedians(ocI.stateDir, 'setup', /^bench-i-\d+$/),
    teardownIpt: stepMedians(ocI.stateDir, 'teardown', /^bench-i-\d+$/),
    setupOne: stepMedians(nets[0].net.stateDir, 'setup', /^bench-one-\d+$/),
    setupMany: stepMedians(nets[1].net.stateDir, 'setup', /^bench-many-\d+$/),
    setupDead: stepMedians(deadNet.net.stateDir, 'setup', /^bench-dead-\d+$/),
  };

  const W = 58;
  const row = (label, s) => `  ${label.padEnd(W)}${r1(s.p50).toFixed(1).padStart(8)}${r1(s.p95).toFixed(1).padStart(9)}`;
  const lifeRows = (label, x) => [row(label, x.life), row('  setup', x.setup), row('  teardown', x.teardown)];
  const verdict = (label, c) => `  ${label.padEnd(W)}${c.value.toFixed(c.target.endsWith('ms') ? 2 : 3).padStart(8)}   target ${c.target.padEnd(10)} ${c.pass ? 'PASS' : 'MISS'}`;
  const informative = (label, v, digits) => `  ${label.padEnd(W)}${v.toFixed(digits).padStart(8)}   info`;
  const fmtSteps = (o) => Object.entries(o).filter(([k]) => k !== 'total').map(([k, v]) => `${k} ${v}`).join(', ');
  const named = { alive: 'teardown while it runs', poststop: 'poststop: after it died' };
  const out = [];
  out.push(`ocinet bench: ${ROUNDS} rounds each, alternating; ${cpus().length} CPUs; node ${process.version}`);
  out.push(`  ${''.padEnd(W)}${'p50 ms'.padStart(8)}${'p95 ms'.padStart(9)}`);
  for (const o of ORDERS) {
    out.push(`  a life with 1 published port, 1 resident; ${named[o]}:`);
    out.push(...lifeRows('ocinet-hook, nftables', S.ocinet[o]));
    out.push(...lifeRows('netavark 1.4 (iptables), static address as Podman', S.netavark[o]));
    out.push(...lifeRows(`CNI bridge+host-local+portmap${o === 'poststop' ? ' (DEL with no netns)' : ''}`, S.cni[o]));
    for (const [k, st] of Object.entries(S.cniSteps[o])) out.push(row(`    ${k}`, st));
    out.push(...lifeRows(`ocinet-cni ADD+DEL, nftables${o === 'poststop' ? ' (DEL with no netns)' : ''}`, S.ocinetCni[o]));
  }
  out.push('  other ocinet lives (teardown while it runs):');
  out.push(...lifeRows('ocinet-hook, iptables', S.iptables));
  out.push(...lifeRows('ocinet-hook, dual stack on nftables', S.dualStack));
  out.push(row('ocinet-hook --version', S.version));
  out.push(row('node -e 0', S.node0));
  out.push(row(`ocinet setup, 1 resident (via nsenter)`, S.setupOne));
  out.push(row(`ocinet setup, ${RESIDENTS} residents (via nsenter)`, S.setupMany));
  out.push(row(`ocinet setup, ${DEAD} dead records in the way (via nsenter)`, S.setupDead));
  out.push(verdict('ratio ocinet/netavark, teardown while it runs (p50)', checks.netavark));
  out.push(verdict('ratio ocinet/netavark, poststop order (p50)', checks.netavarkPoststop));
  out.push(verdict('ratio ocinet/CNI, teardown while it runs (p50)', checks.ratio));
  out.push(verdict('ratio ocinet/CNI, poststop order (p50)', checks.ratioPoststop));
  out.push(verdict('ratio ocinet-cni/CNI chain, teardown while it runs (p50)', checks.cniPlugin));
  out.push(verdict('ratio ocinet-cni/CNI chain, poststop order (p50)', checks.cniPluginPoststop));
  out.push(verdict('ratio nftables/iptables lifecycle (p50)', checks.nftVsIpt));
  out.push(informative('ratio dual stack / IPv4 only, nftables (p50)', S.dualStack.life.p50 / S.ocinet.alive.life.p50, 3));
  out.push(verdict('bundle load: --version - node -e 0', checks.loadMs));
  out.push(verdict('own work, poststop order: setup - --version', checks.ownSetupMs));
  out.push(verdict('own work, poststop order: teardown - --version', checks.ownTeardownMs));
  out.push(informative('own work, teardown while it runs: setup - --version', info.ownAliveSetupMs.value, 2));
  out.push(informative('own work, teardown while it runs: teardown - --version', info.ownAliveTeardownMs.value, 2));
  out.push(verdict(`setup with ${RESIDENTS} live / setup at 1`, checks.scale));
  out.push(informative(`setup with ${DEAD} dead in the way / setup at 1`, info.deadScale.value, 3));
  out.push(informative(`  per reclaim: (dead - at 1) / ${DEAD}, ms`, info.perReclaimMs.value, 2));
  out.push(`ocinet's own work per step (median ms; own = wall - --version; log = the hook's logged total, its steps in [];`);
  out.push(`  outside = own - log: reading stdin, flags and state JSON before the log starts, writing it, exiting):`);
  for (const o of ORDERS) {
    for (const stage of ['setup', 'teardown']) {
      const st = steps[o === 'alive' ? stage : `${stage}Poststop`];
      const ownMs = own(o, stage);
      out.push(`  ${`${stage}, ${o}`.padEnd(19)} own ${r1(ownMs).toFixed(1)} = log ${r1(st.total).toFixed(1)} [${fmtSteps(st)}] + outside ${r1(ownMs - st.total).toFixed(1)}`);
    }
  }
  out.push(`ocinet's step timings elsewhere (median ms, from its log):`);
  for (const k of ['setupIpt', 'teardownIpt', 'setupOne', 'setupMany', 'setupDead']) out.push(`  ${k.padEnd(11)} total ${steps[k].total}, ${fmtSteps(steps[k])}`);
  console.log(out.join('\n'));

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
