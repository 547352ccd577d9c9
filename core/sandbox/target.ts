/**
 * Finding a sandbox's network namespace from what the user typed: a container
 * id or unique prefix known to ocinet's state, else to runc (`runc list`), or
 * a namespace named directly with --netns PATH or --pid PID.
 */
import { OcinetError } from '../base/errors.js';
import { run } from '../base/exec.js';
import { targetKey, vmTarget, type Target } from '../kata/records.js';
import type { VmSockets } from '../vm/hotplug.js';
import { stateId } from '../state/names.js';
import { netnsId, pidNetnsPath } from '../net/netns.js';
import { isAlive } from './reclaim.js';
import { findContainer, loadDb } from '../state/store.js';

export interface TargetOptions {
  stateDir: string;
  runtimeRoot?: string;
  netns?: string;
  pid?: number;
  /** A VM sandbox named by its QEMU's QMP and guest-agent sockets. */
  vm?: VmSockets;
}

function fromPath(nsPath: string, containerId: string | undefined, pid?: number): Target {
  if (/\s/.test(nsPath) || !nsPath.startsWith('/')) throw new OcinetError('EINPUT', `namespace path '${nsPath}' must be absolute, without spaces`);
  const nsId = netnsId(nsPath);
  if (!nsId) throw new OcinetError('ENOTFOUND', `network namespace ${nsPath} does not exist`);
  if (nsId === netnsId('/proc/self/ns/net')) {
    throw new OcinetError('ESELFNS', `${nsPath} is ocinet's own network namespace, not a sandbox`);
  }
  const t: Target = { key: targetKey(nsId), nsPath, nsId };
  if (containerId) t.containerId = containerId;
  if (pid) t.pid = pid;
  return t;
}

interface RuncListed {
  id: string;
  pid: number;
  status: string;
}

async function fromRunc(idOrPrefix: string, root: string | undefined): Promise<Target> {
  const r = await run('runc', [...(root ? ['--root', root] : []), 'list', '--format', 'json'], { allowFail: true });
  if (r.code !== 0) throw new OcinetError('ENOTFOUND', `no container '${idOrPrefix}' (ocinet's state has none; runc list failed: ${r.stderr.trim()})`);
  const all = (JSON.parse(r.stdout || 'null') as RuncListed[] | null) ?? [];
  const exact = all.find((c) => c.id === idOrPrefix);
  const hits = exact ? [exact] : all.filter((c) => c.id.startsWith(idOrPrefix));
  if (hits.length > 1) throw new OcinetError('EINPUT', `container id '${idOrPrefix}' is ambiguous (${hits.length} runc containers match)`);
  const c = hits[0];
  if (!c) throw new OcinetError('ENOTFOUND', `no container '${idOrPrefix}' in ocinet's state or runc's`);
  if (!c.pid || c.status === 'stopped') throw new OcinetError('ENOTFOUND', `container ${c.id} is ${c.status}: it has no network namespace`);
  return fromPath(pidNetnsPath(c.pid), c.id, c.pid);
}

export async function resolveTarget(id: string | undefined, o: TargetOptions): Promise<Target> {
  if (o.vm) return vmTarget(o.vm, id);
  if (o.netns) return fromPath(o.netns, id);
  if (o.pid) return fromPath(pidNetnsPath(o.pid), id, o.pid);
  if (!id) throw new OcinetError('EINPUT', 'missing container id (or --netns PATH / --pid PID)');
  let rec;
  try {
    rec = findContainer(loadDb(o.stateDir), id, stateId(o.stateDir));
  } catch (e) {
    if ((e as OcinetError).code !== 'ENOTFOUND') throw e;
    return fromRunc(id, o.runtimeRoot);
  }
  if (rec.mode === 'tap' && rec.vm) return vmTarget(rec.vm, rec.id);
  if (!isAlive(rec)) throw new OcinetError('ENOTFOUND', `container ${rec.id}'s sandbox is gone (try 'ocinet gc')`);
  return fromPath(rec.nsPath ?? pidNetnsPath(rec.pid!), rec.id, rec.pid);
}
