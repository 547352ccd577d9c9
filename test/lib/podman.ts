/**
 * Real podman for tests: one storage root per test file, a hooks.d directory
 * whose oci-hooks(5) file runs the hook with "env": [], a busybox-static
 * rootfs (`--rootfs`, no image), detached containers.
 *
 * Everything podman keeps lives under `work`: storage (`--root`, vfs, so no
 * overlay mounts), run state (`--runroot`), libpod's tmp dir (`--tmpdir`,
 * else /run/libpod), the network config dir (else /etc/cni/net.d gets a lock
 * file) and runc's state (`--runtime-flag root=`, else /run/runc). The
 * `podman container cleanup` that conmon runs when a container exits is not
 * given `--runtime-flag` and would use /run/runc: `boot` mounts a tmpfs on
 * /run inside the test's own mount namespace, so nothing reaches the host's.
 */
import { spawn } from 'node:child_process';
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { HOOK, sh, type HookRun } from './env.js';

/** Applets the rootfs links to /bin/busybox. */
const APPLETS = ['sh', 'ls', 'cat', 'echo', 'sleep', 'ping', 'wget', 'nc', 'httpd', 'ip', 'ifconfig', 'route', 'hostname', 'timeout'];

/** How long one podman command may take before the test kills it. */
const PODMAN_TIMEOUT_MS = 60_000;

export interface PodmanRunOptions {
  /** `--annotation KEY=VAL` each. */
  annotations?: Record<string, string>;
  /** The container's command; default: a web server on port 80 answering `hello from NAME`. */
  cmd?: string[];
}

/** One line of the hook's JSON-lines log (`STATE_DIR/ocinet.log`). */
export interface HookLogLine {
  ts: string;
  op: string;
  id?: string;
  ok: boolean;
  error?: string;
  code?: string;
  shared?: string;
}

export function hookLog(stateDir: string): HookLogLine[] {
  const file = join(stateDir, 'ocinet.log');
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as HookLogLine);
}

/** The command that serves `hello from NAME` on port 80 from a tmpfs (the rootfs is shared by all containers). */
export function webServer(name: string): string[] {
  return ['sh', '-c', `echo hello from ${name} > /www/index.html && exec httpd -f -p 80 -h /www`];
}

export class Podman {
  readonly rootfs: string;
  readonly hooksDir: string;
  private calls = 0;

  private constructor(
    readonly work: string,
    /** Flags for the hook after its program name (`--state-dir`, `--subnet`, ...). */
    readonly hookArgs: string[],
    readonly hook: string,
  ) {
    this.rootfs = join(work, 'rootfs');
    this.hooksDir = join(work, 'hooks.d');
  }

  /** The file's fixture, made once: rootfs, hooks.d file, storage directories. */
  static async boot(work: string, hookArgs: string[], hook: string = HOOK): Promise<Podman> {
    // Only ever inside isolate()'s private mount namespace: never over the machine's /run.
    if (process.env.OCINET_TEST_ISOLATED !== '1') throw new Error('Podman.boot runs only inside isolate()');
    // -n: no utab entry (libmount would make /run/mount on the host's /run first).
    await sh('mount', ['-n', '-t', 'tmpfs', '-o', 'mode=0755', 'ocinet-test-run', '/run']);
    const p = new Podman(work, hookArgs, hook);
    await p.makeRootfs();
    p.writeHooksFile();
    for (const d of ['root', 'runroot', 'tmp', 'networks', 'runc', 'out']) mkdirSync(join(work, 'podman', d), { recursive: true });
    const info = await p.podman(['info', '--format', '{{.Host.OCIRuntime.Path}}']);
    if (info.exitCode !== 0) throw new Error(`podman info failed: ${info.stderr.trim()}`);
    return p;
  }

  private async makeRootfs(): Promise<void> {
    const busybox = (await sh('sh', ['-c', 'command -v busybox'])).stdout.trim();
    for (const d of ['bin', 'proc', 'sys', 'dev', 'tmp', 'www', 'etc']) mkdirSync(join(this.rootfs, d), { recursive: true });
    copyFileSync(busybox, join(this.rootfs, 'bin/busybox'));
    for (const a of APPLETS) symlinkSync('busybox', join(this.rootfs, 'bin', a));
  }

  /** Like examples/oci-hooks.d/ocinet.json, with this hook and its flags. */
  private writeHooksFile(): void {
    mkdirSync(this.hooksDir, { recursive: true });
    const file = {
      version: '1.0.0',
      hook: { path: this.hook, args: [basename(this.hook), ...this.hookArgs], env: [], timeout: 30 },
      when: { annotations: { '^io\\.ocinet\\..*$': '.*' } },
      stages: ['prestart', 'poststop'],
    };
    writeFileSync(join(this.hooksDir, 'ocinet.json'), JSON.stringify(file, null, 2) + '\n');
  }

  /** podman's global flags: everything it keeps is under `work`, runc is the runtime. */
  globalArgs(): string[] {
    const d = join(this.work, 'podman');
    return [
      '--root', join(d, 'root'), '--runroot', join(d, 'runroot'), '--tmpdir', join(d, 'tmp'),
      '--network-config-dir', join(d, 'networks'), '--storage-driver', 'vfs',
      '--runtime', '/usr/sbin/runc', '--runtime-flag', `root=${join(d, 'runc')}`,
      '--cgroup-manager', 'cgroupfs', '--events-backend', 'none', '--hooks-dir', this.hooksDir,
    ];
  }

  /**
   * Any podman command, bounded. Output goes through files, not pipes: a
   * detached container's conmon must not keep us waiting for end of stream.
   */
  async podman(args: string[]): Promise<HookRun> {
    const n = ++this.calls;
    const outFile = join(this.work, 'podman/out', `${n}.stdout`);
    const errFile = join(this.work, 'podman/out', `${n}.stderr`);
    const out = openSync(outFile, 'w');
    const err = openSync(errFile, 'w');
    const child = spawn('podman', [...this.globalArgs(), ...args], { stdio: ['ignore', out, err] });
    const timer = setTimeout(() => child.kill('SIGKILL'), PODMAN_TIMEOUT_MS);
    const exitCode = await new Promise<number>((r) => {
      child.once('error', () => r(127));
      child.once('exit', (c, sig) => r(c ?? (sig ? 128 : 1)));
    });
    clearTimeout(timer);
    closeSync(out);
    closeSync(err);
    return { exitCode, stdout: readFileSync(outFile, 'utf8'), stderr: readFileSync(errFile, 'utf8') };
  }

  /**
   * `podman run -d` with the options these machines need: no podman network
   * (the hook makes it), rlimits the sandbox accepts, CAP_NET_RAW for ping,
   * a tmpfs on /www. `--rootfs` comes last: everything after it is the command.
   */
  run(name: string, opts: PodmanRunOptions = {}): Promise<HookRun> {
    const ann = Object.entries(opts.annotations ?? {}).flatMap(([k, v]) => ['--annotation', `${k}=${v}`]);
    return this.podman([
      'run', '-d', '--name', name, '--network', 'none',
      '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024',
      '--cap-add', 'NET_RAW', '--tmpfs', '/www',
      ...ann,
      '--rootfs', this.rootfs, ...(opts.cmd ?? webServer(name)),
    ]);
  }

  /** A command inside a running container, bounded by busybox timeout (busybox wget -T is not reliable). */
  exec(name: string, args: string[]): Promise<HookRun> {
    return this.podman(['exec', name, 'busybox', 'timeout', '10', ...args]);
  }

  async inspect(name: string, format: string): Promise<string> {
    const r = await this.podman(['inspect', '--format', format, name]);
    if (r.exitCode !== 0) throw new Error(`podman inspect ${name}: ${r.stderr.trim()}`);
    return r.stdout.trim();
  }

  /** The full container id (what the hook sees as the state's `id`). */
  id(name: string): Promise<string> {
    return this.inspect(name, '{{.Id}}');
  }

  async pid(name: string): Promise<number> {
    return Number(await this.inspect(name, '{{.State.Pid}}'));
  }

  /** `podman rm -f -t 0`: no 10 s wait for SIGTERM (httpd as pid 1 ignores it). Podman runs poststop hooks here. */
  rm(...names: string[]): Promise<HookRun> {
    return this.podman(['rm', '-f', '-t', '0', ...names]);
  }

  rmAll(): Promise<HookRun> {
    return this.podman(['rm', '-a', '-f', '-t', '0']);
  }

  /** Names of all containers podman knows, running or not. */
  async names(): Promise<string[]> {
    const r = await this.podman(['ps', '-a', '--format', '{{.Names}}']);
    return r.stdout.split('\n').filter((l) => l.trim() !== '').sort();
  }
}

/**
 * Lazily unmount whatever is still mounted under dir (a container's shm left
 * by a killed podman), deepest first, so removing dir never walks into a mount.
 */
export async function unmountUnder(dir: string): Promise<void> {
  const points = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p === dir || p.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length);
  for (const p of points) await sh('umount', ['-n', '-l', p], { reject: false });
}
