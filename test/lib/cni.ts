/** Driving the built ocinet-cni as a runtime does: CNI_* environment, configuration on stdin. */
import { execa } from 'execa';
import { DEBIAN_PLUGINS as DEBIAN_CNI, OCINET_CNI as CNI_PLUGIN } from './cni-chain.js';
import { sh } from './env.js';

export { DEBIAN_CNI };

export interface CniRun {
  exitCode: number;
  stdout: string;
  stderr: string;
  /** stdout parsed, when it is JSON. */
  json?: Record<string, unknown>;
}

export interface CniCall {
  command: string;
  containerId?: string;
  netns?: string;
  ifname?: string;
  args?: string;
  /** Replaces the whole environment (bad-environment cases). */
  env?: Record<string, string>;
}

/** Run a CNI plugin (ocinet-cni by default) with only the spec's environment and PATH, as a runtime does. */
export async function cni(call: CniCall, conf: unknown, plugin = CNI_PLUGIN): Promise<CniRun> {
  const env: Record<string, string> = call.env ?? {
    CNI_COMMAND: call.command,
    CNI_PATH: DEBIAN_CNI,
    PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
    ...(call.containerId !== undefined ? { CNI_CONTAINERID: call.containerId } : {}),
    ...(call.netns !== undefined ? { CNI_NETNS: call.netns } : {}),
    CNI_IFNAME: call.ifname ?? 'eth0',
    ...(call.args !== undefined ? { CNI_ARGS: call.args } : {}),
  };
  const input = typeof conf === 'string' ? conf : JSON.stringify(conf);
  const r = await execa(plugin, [], { input, env, extendEnv: false, reject: false });
  const out: CniRun = { exitCode: r.exitCode ?? 1, stdout: String(r.stdout), stderr: String(r.stderr) };
  try {
    out.json = JSON.parse(out.stdout) as Record<string, unknown>;
  } catch {
    // not JSON: DEL, CHECK, GC, STATUS print nothing on success
  }
  return out;
}

/** A network namespace bound to a file (as podman and CRI runtimes make them); `drop` unmounts it. */
export async function boundNetns(path: string): Promise<{ path: string; drop: () => Promise<void> }> {
  await sh('touch', [path]);
  await sh('unshare', [`--net=${path}`, 'ip', 'link', 'set', 'lo', 'up']);
  return { path, drop: async () => void (await sh('umount', [path], { reject: false })) };
}
