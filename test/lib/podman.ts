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
 *
 * With `cni` (podman's CNI backend instead of `--network none` and a hook):
 * a containers.conf of the file's own, named by CONTAINERS_CONF, says
 * `network_backend = "cni"`, the plugin directories and the network config
 * directory (`networkDir`, where the test writes its conflist). Podman
 * creates each container's namespace as a bind mount under /run/netns (the
 * private /run); libcni's cache, /var/lib/cni, is made private too
 * (`privateCniCache`). What podman sends the plugins: test/cni-clients.test.ts.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { privateCniCache } from './cni-chain.js';
import { bounded, busyboxRootfs, clientEnv, HOOK, privateRun, type HookRun } from './env.js';

export { unmountUnder } from './env.js';

const CGROUP_ROOT = '/sys/fs/cgroup';

/** rmdir an empty cgroup; one still busy (or not empty) stays. */
function rmdirOrKeep(dir: string): void {
  try {
    rmdirSync(dir);
  } catch {
    // busy or not empty: not ours to force
  }
}

/** How long one podman command may take before the test kills it. */
const PODMAN_TIMEOUT_MS = 60_000;

/** Podman's CNI backend, for `Podman.boot`. */
export interface PodmanCni {
  /** `cni_plugin_dirs`: where podman finds the plugins a conflist names. */
  pluginDirs: string[];
}

export interface PodmanRunOptions {
  /** `--annotation KEY=VAL` each. */
  annotations?: Record<string, string>;
  /** The container's command; default: a web server on port 80 answering `hello from NAME`. */
  cmd?: string[];
  /** `--network`: default `none` (the hook makes the network). */
  network?: string;
  /** `-p SPEC` each (`8080:80`). */
  publish?: string[];
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
  /** The network config directory (`--network-config-dir`): CNI conflists go here. */
  readonly networkDir: string;
  /** podman's environment (`clientEnv`), with CONTAINERS_CONF for `cni`. */
  private readonly env: NodeJS.ProcessEnv;
  /** Every container `run` made (their cgroups go in `rmAll`). */
  private readonly ids = new Set<string>();

  private constructor(
    readonly work: string,
    /** Flags for the hook after its program name (`--state-dir`, `--subnet`, ...). */
    readonly hookArgs: string[],
    readonly hook: string,
    readonly cni?: PodmanCni,
  ) {
    this.rootfs = join(work, 'rootfs');
    this.hooksDir = join(work, 'hooks.d');
    this.networkDir = join(work, 'podman', 'networks');
    this.env = clientEnv(cni ? { CONTAINERS_CONF: join(work, 'podman', 'containers.conf') } : {});
  }

  /** The file's fixture, made once: rootfs, hooks.d file, storage directories, containers.conf with `cni`. */
  static async boot(work: string, hookArgs: string[], hook: string = HOOK, cni?: PodmanCni): Promise<Podman> {
    await privateRun();
    if (cni) await privateCniCache();
    const p = new Podman(work, hookArgs, hook, cni);
    busyboxRootfs(p.rootfs);
    p.writeHooksFile();
    for (const d of ['root', 'runroot', 'tmp', 'networks', 'runc', 'out']) mkdirSync(join(work, 'podman', d), { recursive: true });
    if (cni) p.writeContainersConf(cni);
    const info = await p.podman(['info', '--format', '{{.Host.OCIRuntime.Path}} {{.Host.NetworkBackend}}']);
    if (info.exitCode !== 0) throw new Error(`podman info failed: ${info.stderr.trim()}`);
    if (cni && !/ cni$/.test(info.stdout.trim())) throw new Error(`podman's network backend is not cni: ${info.stdout.trim()}`);
    return p;
  }

  private writeContainersConf(cni: PodmanCni): void {
    const list = (xs: string[]): string => `[${xs.map((x) => JSON.stringify(x)).join(', ')}]`;
    const conf = [
      '[network]',
      'network_backend = "cni"',
      `cni_plugin_dirs = ${list(cni.pluginDirs)}`,
      `network_config_dir = ${JSON.stringify(this.networkDir)}`,
      '',
    ];
    writeFileSync(this.env.CONTAINERS_CONF!, conf.join('\n'));
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

  /** Any podman command, bounded (a detached container's conmon must not keep us waiting: see `bounded`). */
  podman(args: string[]): Promise<HookRun> {
    return bounded('podman', [...this.globalArgs(), ...args], { outDir: join(this.work, 'podman/out'), env: this.env, timeoutMs: PODMAN_TIMEOUT_MS });
  }

  /**
   * `podman run -d` with the options these machines need: no podman network
   * unless asked (the hook makes it), rlimits the sandbox accepts,
   * CAP_NET_RAW for ping, a tmpfs on /www. `--rootfs` comes last: everything
   * after it is the command.
   */
  async run(name: string, opts: PodmanRunOptions = {}): Promise<HookRun> {
    const ann = Object.entries(opts.annotations ?? {}).flatMap(([k, v]) => ['--annotation', `${k}=${v}`]);
    const ports = (opts.publish ?? []).flatMap((p) => ['-p', p]);
    const r = await this.podman([
      'run', '-d', '--name', name, '--network', opts.network ?? 'none', ...ports,
      '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024',
      '--cap-add', 'NET_RAW', '--tmpfs', '/www',
      ...ann,
      '--rootfs', this.rootfs, ...(opts.cmd ?? webServer(name)),
    ]);
    // A failed start prints no id: ask for it (the container exists, "Created").
    const id = /^[0-9a-f]{64}$/m.exec(r.stdout)?.[0] ?? (await this.podman(['inspect', '--format', '{{.Id}}', name])).stdout.trim();
    if (/^[0-9a-f]{64}$/.test(id)) this.ids.add(id);
    return r;
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

  /**
   * Remove every container, then the cgroups podman leaves for them: with
   * runc and cgroupfs on this machine's cgroup v1, each container's empty
   * `libpod_parent/libpod-ID` stays behind in every hierarchy of the
   * machine's cgroup tree (libpod_parent itself is shared: kept).
   */
  async rmAll(): Promise<HookRun> {
    const r = await this.podman(['rm', '-a', '-f', '-t', '0']);
    for (const h of readdirSync(CGROUP_ROOT)) {
      for (const id of this.ids) {
        const dir = join(CGROUP_ROOT, h, 'libpod_parent', `libpod-${id}`);
        if (existsSync(dir)) rmdirOrKeep(dir);
      }
    }
    return r;
  }

  /** Names of all containers podman knows, running or not. */
  async names(): Promise<string[]> {
    const r = await this.podman(['ps', '-a', '--format', '{{.Names}}']);
    return r.stdout.split('\n').filter((l) => l.trim() !== '').sort();
  }
}
