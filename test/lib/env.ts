/** Shared test fixtures: fake sandboxes, the built hook, namespace snapshots. */
import { execa } from 'execa';
import type { Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, closeSync, constants, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';

export const ROOT = new URL('../..', import.meta.url).pathname.replace(/\/$/, '');
export const HOOK = join(ROOT, 'dist/bin/ocinet-hook');
export const CLI = join(ROOT, 'dist/bin/ocinet');

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `ocinet-${prefix}-`));
}

/** A process in a network namespace of its own: the stand-in for a container's init. */
export interface Sandbox {
  pid: number;
  proc: ChildProcess;
  kill(): Promise<void>;
}

export async function sandbox(): Promise<Sandbox> {
  const proc = spawn('unshare', ['--net', '--', 'sleep', '3600'], { stdio: 'ignore' });
  const pid = proc.pid!;
  // unshare execs sleep in the same process: wait until its netns differs from ours.
  const self = await nsOf('self');
  for (let i = 0; i < 200 && (await nsOf(String(pid))) === self; i++) await sleep(5);
  return {
    pid,
    proc,
    kill: () =>
      new Promise((r) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return r();
        proc.once('exit', () => r());
        proc.kill('SIGKILL');
      }),
  };
}

async function nsOf(pid: string): Promise<string> {
  try {
    const { readlink } = await import('node:fs/promises');
    return await readlink(`/proc/${pid}/ns/net`);
  } catch {
    return '';
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function state(id: string, status: string, pid?: number, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ ociVersion: '1.0.2', id, status, ...(pid !== undefined ? { pid } : {}), bundle: '/nonexistent', ...extra });
}

export interface HookRun {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Run the built hook with an empty environment, as runc's `"env": []` does. */
export async function hook(args: string[], input: string): Promise<HookRun> {
  const r = await execa(HOOK, args, { input, env: {}, extendEnv: false, reject: false });
  return { exitCode: r.exitCode ?? 1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

export async function cli(args: string[], input?: string): Promise<HookRun> {
  const r = await execa(CLI, args, { reject: false, ...(input !== undefined ? { input } : {}) });
  return { exitCode: r.exitCode ?? 1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

export async function sh(file: string, args: string[], opts: { input?: string; reject?: boolean } = {}): Promise<HookRun> {
  const r = await execa(file, args, { reject: opts.reject ?? true, ...(opts.input !== undefined ? { input: opts.input } : {}) });
  return { exitCode: r.exitCode ?? 1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** Run a command inside a sandbox's network namespace. */
export async function inNs(pid: number, args: string[], reject = true): Promise<HookRun> {
  return sh('nsenter', [`--net=/proc/${pid}/ns/net`, '--', ...args], { reject });
}

/** What ocinet may leave in a namespace: links, NAT/filter rules, port guards, nftables tables, leases. */
export async function snapshot(stateDir?: string): Promise<string> {
  const links = (await sh('ip', ['-o', 'link', 'show'])).stdout.split('\n').map((l) => l.split(':')[1]?.trim().split('@')[0]).sort();
  // Rules and user chains only: nftables keeps emptied tables around, which is no leak.
  const rules = (await sh('iptables-save', [])).stdout
    .split('\n')
    .filter((l) => l.startsWith('-A ') || (l.startsWith(':') && !/ (ACCEPT|DROP) /.test(l)));
  // Port guards: the bridge family's rules and user chains.
  const guards = (await sh('ebtables-save', ['-t', 'nat'])).stdout
    .split('\n')
    .filter((l) => l.startsWith('-A ') || (l.startsWith(':') && !/^:(PREROUTING|OUTPUT|POSTROUTING) /.test(l)));
  // The nftables backend's own tables (iptables-nft's are in `rules`).
  const nft: string[] = [];
  for (const l of (await sh('nft', ['list', 'tables'], { reject: false })).stdout.split('\n')) {
    const m = /^table (\w+) (ocinet-\S+)$/.exec(l);
    if (m) nft.push((await sh('nft', ['list', 'table', m[1]!, m[2]!])).stdout);
  }
  let leases = '{}';
  if (stateDir && existsSync(join(stateDir, 'state.json'))) {
    const db = JSON.parse(readFileSync(join(stateDir, 'state.json'), 'utf8')) as { containers: object; networks: object };
    // A network's allocation cursor (lastIp) moves with every setup: not something left behind.
    const networks = Object.fromEntries(Object.entries(db.networks).map(([k, n]) => [k, { ...n, lastIp: undefined, lastIp6: undefined }]));
    if (Object.keys(db.containers).length || Object.keys(networks).length) leases = JSON.stringify({ containers: db.containers, networks });
  }
  return JSON.stringify({ links, rules, guards, nft, leases }, null, 1);
}

export function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export interface StateDb {
  containers: Record<string, { ip?: string; hostVeth?: string; mode: string }>;
  networks: Record<string, unknown>;
}

export function readDb(dir: string): StateDb {
  const p = join(dir, 'state.json');
  if (!existsSync(p)) return { containers: {}, networks: {} };
  return JSON.parse(readFileSync(p, 'utf8')) as StateDb;
}

/**
 * Another host: a namespace of its own joined to ours by veth `name`
 * (`hostAddr` here, `peerAddr` there, both /24, its default route back to
 * us), answering HTTP on port 7000 with the peer address it sees.
 */
export async function outsideHost(name: string, hostAddr: string, peerAddr: string): Promise<{ sb: Sandbox; stop: () => Promise<void> }> {
  const sb = await sandbox();
  await sh('ip', ['link', 'add', name, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', String(sb.pid)]);
  await sh('ip', ['addr', 'add', `${hostAddr}/24`, 'dev', name]);
  await sh('ip', ['link', 'set', name, 'up']);
  await inNs(sb.pid, ['ip', 'addr', 'add', `${peerAddr}/24`, 'dev', 'eth0']);
  await inNs(sb.pid, ['ip', 'link', 'set', 'eth0', 'up']);
  await inNs(sb.pid, ['ip', 'link', 'set', 'lo', 'up']);
  await inNs(sb.pid, ['ip', 'route', 'add', 'default', 'via', hostAddr]);
  const server = spawn(
    'nsenter',
    [`--net=/proc/${sb.pid}/ns/net`, '--', process.execPath, '-e',
      "require('http').createServer((q,s)=>s.end('peer='+q.socket.remoteAddress.replace('::ffff:',''))).listen(7000)"],
    { stdio: 'ignore' },
  );
  await sleep(300);
  return {
    sb,
    stop: async () => {
      server.kill('SIGKILL');
      await sb.kill();
    },
  };
}

export type OutsideHost = Awaited<ReturnType<typeof outsideHost>>;

/**
 * A file's usual fixture: the outside host `ocout0` (192.0.2.1 here, .2
 * there), `prepare` (e.g. IPv6 on its link), then the namespace's baseline
 * snapshot. The host and `work` go when the file ends.
 */
export async function outsideAndBaseline(t: Test, work: string, prepare?: (o: OutsideHost) => Promise<void>): Promise<{ outside: OutsideHost; baseline: string }> {
  const outside = await outsideHost('ocout0', '192.0.2.1', '192.0.2.2');
  t.teardown(async () => {
    await outside.stop();
    cleanup(work);
  });
  await prepare?.(outside);
  return { outside, baseline: await snapshot() };
}

/** What `url` answers, fetched from the test's namespace or from inside `pid`'s ('' when nothing does, within 5 s). */
export async function httpGet(url: string, pid?: number): Promise<string> {
  const args = ['timeout', '5', 'busybox', 'wget', '-qO-', url];
  return (pid ? await inNs(pid, args, false) : await sh(args[0]!, args.slice(1), { reject: false })).stdout.trim();
}

/** Where `name` is on PATH (what `command -v` says, without a shell). */
export function which(name: string): string {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
    const p = join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  throw new Error(`${name} is not on PATH`);
}

/** Applets a busybox rootfs links to /bin/busybox. */
const APPLETS = ['sh', 'ls', 'cat', 'echo', 'sleep', 'ping', 'wget', 'nc', 'httpd', 'ip', 'ifconfig', 'route', 'hostname', 'timeout'];

/** A rootfs of busybox-static and its applets (the containers' whole userland); `dir` is made. */
export function busyboxRootfs(dir: string): void {
  for (const d of ['bin', 'proc', 'sys', 'dev', 'tmp', 'www', 'etc']) mkdirSync(join(dir, d), { recursive: true });
  copyFileSync(which('busybox'), join(dir, 'bin/busybox'));
  for (const a of APPLETS) symlinkSync('busybox', join(dir, 'bin', a));
}

export interface BoundedOptions {
  /** Where stdout and stderr go (files `N.stdout`, `N.stderr`). */
  outDir: string;
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
}

let boundedRuns = 0;

/**
 * The environment for real clients (ctr, podman), which their CNI plugins
 * inherit: without NODE_EXTRA_CA_CERTS, which costs every Node plugin start
 * ~40 ms here.
 */
export function clientEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  delete env.NODE_EXTRA_CA_CERTS;
  return env;
}

/**
 * Any command, killed after `timeoutMs`. Output goes through files, not
 * pipes: a daemon it starts (conmon, a containerd shim) may inherit them and
 * must not keep us waiting for end of stream.
 */
export async function bounded(file: string, args: string[], opts: BoundedOptions): Promise<HookRun> {
  const n = ++boundedRuns;
  mkdirSync(opts.outDir, { recursive: true });
  const outFile = join(opts.outDir, `${n}.stdout`);
  const errFile = join(opts.outDir, `${n}.stderr`);
  const out = openSync(outFile, 'w');
  const err = openSync(errFile, 'w');
  const child = spawn(file, args, { stdio: ['ignore', out, err], ...(opts.env ? { env: opts.env } : {}) });
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
  const exitCode = await new Promise<number>((r) => {
    child.once('error', () => r(127));
    child.once('exit', (c, sig) => r(c ?? (sig ? 128 : 1)));
  });
  clearTimeout(timer);
  closeSync(out);
  closeSync(err);
  return { exitCode, stdout: readFileSync(outFile, 'utf8'), stderr: readFileSync(errFile, 'utf8') };
}

/** Mount points at or below `dir` in this mount namespace, deepest first. */
function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p === dir || p.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length);
}

/**
 * Lazily unmount whatever is still mounted under dir (a container's shm left
 * by a killed podman, a containerd snapshot), deepest first, so removing dir
 * never walks into a mount.
 */
export async function unmountUnder(dir: string): Promise<void> {
  for (const p of mountsUnder(dir)) await sh('umount', ['-n', '-l', p], { reject: false });
}

function requireIsolated(what: string): void {
  // Only ever inside isolate()'s private mount namespace: never over the machine's own directories.
  if (process.env.OCINET_TEST_ISOLATED !== '1') throw new Error(`${what} runs only inside isolate()`);
}

const RUN_TMPFS = 'ocinet-test-run';

/**
 * A tmpfs on /run of this test's mount namespace, once: podman (/run/libpod,
 * /run/netns, conmon's /run/runc), containerd's shims (/run/containerd/s,
 * fixed whatever the config says) and iptables' lock then leave nothing in
 * the machine's /run. `-n`: no utab entry (libmount would make /run/mount on
 * the host's /run first).
 */
export async function privateRun(): Promise<void> {
  requireIsolated('privateRun');
  const mine = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === '/run' && l.split(' - ')[1]?.split(' ')[1] === RUN_TMPFS);
  if (!mine) await sh('mount', ['-n', '-t', 'tmpfs', '-o', 'mode=0755', RUN_TMPFS, '/run']);
}

let overlays = 0;
const madePrivate = new Set<string>();

/**
 * Make `path` an empty directory private to this test's mount namespace.
 * When it exists: a tmpfs over it. When it does not (/opt/cni/bin,
 * /var/lib/cni on this machine): an overlay over its nearest existing
 * ancestor, upper layer on the private /run, and `path` made in that layer,
 * so the machine's own tree never gets the directory while the ancestor's
 * other entries stay visible. Everything goes with the namespace. Once per
 * path and process: a second call keeps what the first made.
 */
export async function privateDir(path: string): Promise<void> {
  requireIsolated('privateDir');
  if (madePrivate.has(path)) return;
  madePrivate.add(path);
  if (existsSync(path)) {
    await sh('mount', ['-n', '-t', 'tmpfs', '-o', 'mode=0755', 'ocinet-test-dir', path]);
    return;
  }
  let base = dirname(path);
  while (!existsSync(base)) base = dirname(base);
  if (base === '/') throw new Error(`privateDir ${path}: would need an overlay on /`);
  await privateRun();
  const layer = join('/run/ocinet-test-overlay', String(++overlays));
  mkdirSync(join(layer, 'upper'), { recursive: true });
  mkdirSync(join(layer, 'work'), { recursive: true });
  await sh('mount', ['-n', '-t', 'overlay', '-o', `lowerdir=${base},upperdir=${join(layer, 'upper')},workdir=${join(layer, 'work')}`, 'ocinet-test-overlay', base]);
  mkdirSync(path, { recursive: true });
}
