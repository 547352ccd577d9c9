/**
 * Real containerd for tests: one daemon per test file, inside the file's own
 * namespaces (isolate()), everything it keeps under a temp dir, and `ctr`
 * as the client.
 *
 * The daemon's config puts `root`, `state`, the gRPC socket and the ttrpc
 * socket under `work`, with no debug socket and no metrics; the CRI plugin
 * (its own CNI and /var/lib/containerd use), the `opt` plugin (it makes
 * /opt/containerd) and the snapshotters this machine has no use for are off.
 * Some paths are fixed whatever the config says: the shims' sockets
 * (/run/containerd/s), runc's root (/run/containerd/runc) and ctr's fifos
 * (/run/containerd/fifo): `privateRun()` puts a tmpfs on /run first.
 *
 * `ctr run --cni` reads go-cni's fixed directories, /etc/cni/net.d (the
 * first conflist in sorted order) and /opt/cni/bin, and libcni caches results
 * in /var/lib/cni: `privateCtrCniDirs()` makes all three private to the mount
 * namespace (tmpfs, or an overlay when the directory does not exist on the
 * machine), so the machine's own are neither read nor written.
 *
 * What ctr 1.6 does with CNI (observed by test/cni-clients.test.ts):
 * - ADD after the task is created and before it starts, with
 *   CNI_NETNS=/proc/PID/ns/net (the task's init), CNI_CONTAINERID
 *   `NAMESPACE-ID` (`default-c1`), CNI_IFNAME eth0, CNI_ARGS empty, CNI_PATH
 *   /opt/cni/bin:/usr/lib/cni (Debian's ctr searches /usr/lib/cni too, after
 *   /opt/cni/bin). No VERSION call.
 * - DEL only from a foreground `ctr run --rm --cni`, after the task exited
 *   (and after a failed ADD), with CNI_NETNS "" and libcni's cached result
 *   as prevResult (its `sandbox` still names the dead /proc/PID). A plugin
 *   that needs the namespace to undo its work (Debian's bridge: the ipMasq
 *   chain) leaks. `ctr run -d --cni` never calls DEL: `ctr task kill` /
 *   `ctr container rm` leave the lease, the cached result and the rules
 *   behind. Hence `background()`: a foreground `ctr run --rm` that the test
 *   leaves running and stops with `ctr task kill`.
 * - Neither CHECK, GC nor STATUS; a result whose cniVersion is 1.1.0 is
 *   refused ("unsupported CNI result version").
 * - `--cgroup ""` (`runArgs`): ctr's default cgroupsPath `/default/ID` makes
 *   `/default` in every hierarchy of the machine's cgroup tree, which runc
 *   never removes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { privateCniCache } from './cni-chain.js';
import { bounded, cleanup, clientEnv, privateDir, privateRun, sh, sleep, unmountUnder, type HookRun } from './env.js';

/** go-cni's fixed directories that `ctr run --cni` reads. */
export const CTR_CNI_CONF_DIR = '/etc/cni/net.d';
export const CTR_CNI_BIN_DIR = '/opt/cni/bin';

/** How long one ctr command may take before the test kills it. */
const CTR_TIMEOUT_MS = 60_000;

/**
 * /etc/cni/net.d, /opt/cni/bin and /var/lib/cni made empty and private to the
 * test's mount namespace; the caller writes the conflist and the plugins.
 */
export async function privateCtrCniDirs(): Promise<{ confDir: string; binDir: string }> {
  await privateRun();
  await privateDir(CTR_CNI_CONF_DIR);
  await privateDir(CTR_CNI_BIN_DIR);
  await privateCniCache();
  return { confDir: CTR_CNI_CONF_DIR, binDir: CTR_CNI_BIN_DIR };
}

const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

/**
 * An OCI image archive (oci-layout, index.json, blobs) of `rootfs` as one
 * uncompressed layer, written straight from Node: the layer by `tar`
 * (sorted, owner 0, mtime 0, so the same rootfs gives the same digest), the
 * config, manifest and index as JSON. `ctr images import` names the image
 * from the index's `io.containerd.image.name` annotation.
 */
export async function ociArchive(rootfs: string, name: string, out: string): Promise<void> {
  const dir = `${out}.d`;
  const blobs = join(dir, 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  const layerTar = join(dir, 'layer.tar');
  await sh('tar', ['--sort=name', '--numeric-owner', '--owner=0', '--group=0', '--mtime=@0', '-C', rootfs, '-cf', layerTar, '.']);
  const layer = readFileSync(layerTar);
  const layerDigest = sha256(layer);
  writeFileSync(join(blobs, layerDigest), layer);
  const blob = (json: object): { digest: string; size: number } => {
    const b = Buffer.from(JSON.stringify(json));
    const digest = sha256(b);
    writeFileSync(join(blobs, digest), b);
    return { digest: `sha256:${digest}`, size: b.length };
  };
  const architecture = ({ x64: 'amd64', arm64: 'arm64' } as Record<string, string>)[process.arch] ?? process.arch;
  const config = blob({
    architecture,
    os: 'linux',
    config: { Env: ['PATH=/bin'], Cmd: ['sh'] },
    rootfs: { type: 'layers', diff_ids: [`sha256:${layerDigest}`] },
  });
  const manifest = blob({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: `sha256:${layerDigest}`, size: layer.length }],
  });
  const index = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: [
      {
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        ...manifest,
        platform: { architecture, os: 'linux' },
        annotations: { 'io.containerd.image.name': name, 'org.opencontainers.image.ref.name': name.split(':').pop() ?? 'latest' },
      },
    ],
  };
  writeFileSync(join(dir, 'index.json'), JSON.stringify(index));
  writeFileSync(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await sh('tar', ['--numeric-owner', '--owner=0', '--group=0', '-C', dir, '-cf', out, 'oci-layout', 'index.json', 'blobs']);
  cleanup(dir);
}

export interface CtrRunOptions {
  /** `--cni` (default true). */
  cni?: boolean;
  /** More `ctr run` flags, before the image (`--cap-add`, `--env`, ...). */
  flags?: string[];
}

/** A task the test left running: a foreground `ctr run --rm` whose exit (DEL included) `stop()` waits for. */
export interface CtrTask {
  id: string;
  /** The task's init pid (in this pid namespace). */
  pid: number;
  /** What the ctr run printed and its exit code, once it has exited. */
  exited: Promise<HookRun>;
  /** `ctr task kill -s SIGKILL`, then the ctr run's exit. */
  stop(): Promise<HookRun>;
}

export interface TaskRow {
  id: string;
  pid: number;
  status: string;
}

export class Containerd {
  readonly sock: string;

  private constructor(
    readonly work: string,
    private readonly daemon: ChildProcess,
    private readonly exit: Promise<number>,
  ) {
    this.sock = join(work, 'containerd.sock');
  }

  /**
   * Start the daemon and wait until it answers `ctr version`. `work` is the
   * file's temp dir: the daemon's own things go under `work/containerd`.
   */
  static async start(work: string): Promise<Containerd> {
    await privateRun();
    const dir = join(work, 'containerd');
    mkdirSync(dir, { recursive: true });
    const sock = join(work, 'containerd.sock');
    const config = [
      'version = 2',
      `root = ${JSON.stringify(join(dir, 'root'))}`,
      `state = ${JSON.stringify(join(dir, 'state'))}`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",',
      '  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]',
      '[grpc]',
      `  address = ${JSON.stringify(sock)}`,
      '[ttrpc]',
      `  address = ${JSON.stringify(`${sock}.ttrpc`)}`,
      '[debug]',
      '  address = ""',
      '[metrics]',
      '  address = ""',
      '',
    ].join('\n');
    writeFileSync(join(dir, 'config.toml'), config);
    const log = openSync(join(dir, 'containerd.log'), 'w');
    const daemon = spawn('containerd', ['--config', join(dir, 'config.toml')], { stdio: ['ignore', log, log] });
    closeSync(log);
    const exit = new Promise<number>((r) => {
      daemon.once('error', () => r(127));
      daemon.once('exit', (c, sig) => r(c ?? (sig ? 128 : 1)));
    });
    const c = new Containerd(work, daemon, exit);
    // The socket first (ctr would wait out its dial timeout on a missing one), then an answer.
    for (let i = 0; i < 400 && daemon.exitCode === null; i++) {
      if (existsSync(sock) && (await c.ctr(['version'], 5_000)).exitCode === 0) return c;
      await sleep(25);
    }
    await c.stop();
    throw new Error(`containerd did not answer: ${readFileSync(join(dir, 'containerd.log'), 'utf8').slice(-2000)}`);
  }

  /** Any ctr command against this daemon, bounded. */
  ctr(args: string[], timeoutMs = CTR_TIMEOUT_MS): Promise<HookRun> {
    return bounded('ctr', ['--address', this.sock, ...args], { outDir: join(this.work, 'containerd', 'out'), env: clientEnv(), timeoutMs });
  }

  /** Import `rootfs` as image `name` (an OCI archive written by `ociArchive`); returns `name`. */
  async importRootfs(rootfs: string, name: string): Promise<string> {
    const archive = join(this.work, 'containerd', 'image.tar');
    await ociArchive(rootfs, name, archive);
    const r = await this.ctr(['images', 'import', archive]);
    if (r.exitCode !== 0) throw new Error(`ctr images import: ${r.stderr.trim()}`);
    const names = (await this.ctr(['images', 'ls', '-q'])).stdout.split('\n');
    if (!names.includes(name)) throw new Error(`ctr images import did not make ${name}: ${names.join(' ')}`);
    return name;
  }

  private runArgs(image: string, id: string, cmd: string[], opts: CtrRunOptions): string[] {
    // --cgroup "": no cgroupsPath, so runc makes the container's cgroup below
    // its own and removes it (the default /default/ID leaves /default behind
    // in the machine's cgroup tree).
    return ['run', '--rm', ...(opts.cni === false ? [] : ['--cni']), '--cgroup', '', ...(opts.flags ?? []), image, id, ...cmd];
  }

  /** `ctr run --rm --cni IMAGE ID CMD...` in the foreground: ADD, the command, DEL. */
  run(image: string, id: string, cmd: string[], opts: CtrRunOptions = {}): Promise<HookRun> {
    return this.ctr(this.runArgs(image, id, cmd, opts));
  }

  /**
   * The same `ctr run --rm --cni` left running (not `-d`: ctr then never
   * calls DEL); returns once the task is RUNNING, which is after the ADD.
   */
  async background(image: string, id: string, cmd: string[], opts: CtrRunOptions = {}): Promise<CtrTask> {
    const exited = this.ctr(this.runArgs(image, id, cmd, opts));
    let row: TaskRow | undefined;
    let done = false;
    void exited.then(() => (done = true));
    for (let i = 0; i < 600 && !done; i++) {
      row = (await this.tasks()).find((t) => t.id === id && t.status === 'RUNNING');
      if (row) break;
      await sleep(25);
    }
    if (!row) {
      await this.ctr(['task', 'kill', '-s', 'SIGKILL', id]);
      const r = await exited;
      throw new Error(`ctr run ${id} did not start (exit ${r.exitCode}): ${r.stderr.trim()}`);
    }
    return {
      id,
      pid: row.pid,
      exited,
      stop: async () => {
        await this.ctr(['task', 'kill', '-s', 'SIGKILL', id]);
        return exited;
      },
    };
  }

  /** `ctr task ls`: every task, its pid and status. */
  async tasks(): Promise<TaskRow[]> {
    const r = await this.ctr(['task', 'ls']);
    return r.stdout
      .split('\n')
      .slice(1)
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => f.length === 3)
      .map(([id, pid, status]) => ({ id: id!, pid: Number(pid), status: status! }));
  }

  /** Names of the containers containerd knows. */
  async containers(): Promise<string[]> {
    return (await this.ctr(['containers', 'ls', '-q'])).stdout.split('\n').filter((l) => l.trim() !== '').sort();
  }

  /**
   * Kill what is left (tasks, containers), stop the daemon (SIGTERM, SIGKILL
   * after 10 s), unmount what it left mounted under `work`. The caller
   * removes `work`.
   */
  async stop(): Promise<void> {
    if (this.daemon.exitCode === null && this.daemon.signalCode === null) {
      for (const t of await this.tasks()) {
        await this.ctr(['task', 'kill', '-s', 'SIGKILL', t.id]);
        await this.ctr(['task', 'delete', '--force', t.id]);
      }
      for (const c of await this.containers()) await this.ctr(['containers', 'delete', c]);
      this.daemon.kill('SIGTERM');
      const timer = setTimeout(() => this.daemon.kill('SIGKILL'), 10_000);
      await this.exit;
      clearTimeout(timer);
    }
    await unmountUnder(this.work);
  }
}
