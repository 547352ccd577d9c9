/** The flags every sandbox command shares, and finding the sandbox from them. */
import { resolveStateDir } from '../core/input/config.js';
import { OcinetError } from '../core/base/errors.js';
import type { Target } from '../core/kata/records.js';
import { resolveTarget } from '../core/sandbox/target.js';
import type { FlagSpec } from './args.js';

export const SANDBOX_FLAGS: FlagSpec = {
  '--state-dir': { key: 'stateDir', kind: 'string' },
  '--runtime-root': { key: 'runtimeRoot', kind: 'string' },
  '--netns': { key: 'netns', kind: 'string' },
  '--pid': { key: 'pid', kind: 'string' },
  '--qmp': { key: 'qmp', kind: 'string' },
  '--qga': { key: 'qga', kind: 'string' },
};

export const SANDBOX_USAGE = `  --state-dir DIR       ocinet state (default $OCINET_STATE_DIR or /run/ocinet)
  --runtime-root DIR    runc's --root, to find containers ocinet did not set up
  --netns PATH | --pid PID   name a container sandbox's network namespace directly (ID optional)
  --qmp SOCKET --qga SOCKET  name a VM sandbox by its QEMU's QMP and guest-agent sockets (ID optional)`;

export interface SandboxFlags {
  stateDir?: string;
  runtimeRoot?: string;
  netns?: string;
  pid?: string;
  qmp?: string;
  qga?: string;
}

/** True when the flags name the sandbox, so the container id may be left out. */
export function namedDirectly(f: SandboxFlags): boolean {
  return f.netns !== undefined || f.pid !== undefined || f.qmp !== undefined;
}

export function stateDirOf(f: SandboxFlags): string {
  return resolveStateDir(f.stateDir, process.env);
}

export async function targetFrom(f: SandboxFlags, id: string | undefined): Promise<Target> {
  if ((f.qmp === undefined) !== (f.qga === undefined)) throw new OcinetError('EINPUT', '--qmp and --qga go together');
  for (const sock of [f.qmp, f.qga]) {
    if (sock !== undefined && !sock.startsWith('/')) throw new OcinetError('EINPUT', `socket path '${sock}' must be absolute`);
  }
  let pid: number | undefined;
  if (f.pid !== undefined) {
    if (!/^[1-9]\d*$/.test(f.pid)) throw new OcinetError('EINPUT', `--pid '${f.pid}' is not a process id`);
    pid = Number(f.pid);
  }
  return resolveTarget(id, {
    stateDir: stateDirOf(f),
    ...(f.runtimeRoot ? { runtimeRoot: f.runtimeRoot } : {}),
    ...(f.netns ? { netns: f.netns } : {}),
    ...(pid ? { pid } : {}),
    ...(f.qmp && f.qga ? { vm: { qmp: f.qmp, qga: f.qga } } : {}),
  });
}
