/** The flags every sandbox command shares, and finding the sandbox from them. */
import { resolveStateDir } from '../core/input/config.js';
import { OcinetError } from '../core/base/errors.js';
import { sharingAgent, type Target } from '../core/kata/records.js';
import { resolveTarget } from '../core/sandbox/target.js';
import type { FlagSpec } from './args.js';
import { DEFAULT_LINGER_MS } from '../core/vm/agent-hold.js';

export const SANDBOX_FLAGS: FlagSpec = {
  '--state-dir': { key: 'stateDir', kind: 'string' },
  '--runtime-root': { key: 'runtimeRoot', kind: 'string' },
  '--netns': { key: 'netns', kind: 'string' },
  '--pid': { key: 'pid', kind: 'string' },
  '--qmp': { key: 'qmp', kind: 'string' },
  '--qga': { key: 'qga', kind: 'string' },
  '--agent-hold': { key: 'agentHold', kind: 'string' },
};

export const SANDBOX_USAGE = `  --state-dir DIR       ocinet state (default $OCINET_STATE_DIR or /run/ocinet)
  --runtime-root DIR    runc's --root, to find containers ocinet did not set up
  --netns PATH | --pid PID   name a container sandbox's network namespace directly (ID optional)
  --qmp SOCKET --qga SOCKET  name a VM sandbox by its QEMU's QMP and guest-agent sockets (ID optional)
  --agent-hold MS       keep a VM's guest-agent connection this long for the next call
                        (default ${DEFAULT_LINGER_MS}: close it when the call ends; 500 saves a
                        back-to-back call up to the agent's 100 ms idle read)`;

export interface SandboxFlags {
  stateDir?: string;
  runtimeRoot?: string;
  netns?: string;
  pid?: string;
  qmp?: string;
  qga?: string;
  agentHold?: string;
}

/** The longest --agent-hold: QEMU serves no other agent client meanwhile. */
const MAX_LINGER_MS = 60_000;

/** --agent-hold in ms (whole, 0..60000), or the default. */
export function agentLingerOf(f: SandboxFlags): number {
  if (f.agentHold === undefined) return DEFAULT_LINGER_MS;
  if (!/^\d{1,5}$/.test(f.agentHold) || Number(f.agentHold) > MAX_LINGER_MS) {
    throw new OcinetError('EINPUT', `--agent-hold takes whole milliseconds from 0 to ${MAX_LINGER_MS}, got '${f.agentHold}'`);
  }
  return Number(f.agentHold);
}

/** True when the flags name the sandbox, so the container id may be left out. */
export function namedDirectly(f: SandboxFlags): boolean {
  return f.netns !== undefined || f.pid !== undefined || f.qmp !== undefined;
}

export function stateDirOf(f: SandboxFlags): string {
  return resolveStateDir(f.stateDir, process.env);
}

/** The sandbox the flags and id name, in state dir `stateDir` (stateDirOf's, checked once by the caller). */
export async function targetFrom(f: SandboxFlags, id: string | undefined, stateDir: string): Promise<Target> {
  if ((f.qmp === undefined) !== (f.qga === undefined)) throw new OcinetError('EINPUT', '--qmp and --qga go together');
  for (const sock of [f.qmp, f.qga]) {
    if (sock !== undefined && !sock.startsWith('/')) throw new OcinetError('EINPUT', `socket path '${sock}' must be absolute`);
  }
  let pid: number | undefined;
  if (f.pid !== undefined) {
    if (!/^[1-9]\d*$/.test(f.pid)) throw new OcinetError('EINPUT', `--pid '${f.pid}' is not a process id`);
    pid = Number(f.pid);
  }
  const lingerMs = agentLingerOf(f);
  const t = await resolveTarget(id, {
    stateDir,
    ...(f.runtimeRoot ? { runtimeRoot: f.runtimeRoot } : {}),
    ...(f.netns ? { netns: f.netns } : {}),
    ...(pid ? { pid } : {}),
    ...(f.qmp && f.qga ? { vm: { qmp: f.qmp, qga: f.qga } } : {}),
  });
  return sharingAgent(t, stateDir, lingerMs);
}
