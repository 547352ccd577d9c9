/**
 * Dead records never decide. A record is alive while its process is the one
 * that was recorded (pid + start time) and still in the recorded network
 * namespace; a CNI attachment while the runtime's namespace file still is
 * that namespace; a VM sandbox while its QEMU is. A decision that reads other
 * records (sharing, ports, a static address, a full pool, the last container
 * leaving, the same id set up again) asks `blocks()`: a dead record standing
 * in the way is taken out of the state there and then, under the lock, and
 * its kernel objects are removed by `finish()` before the lock is released.
 * gc runs every record through the same code.
 */
import { existsSync } from 'node:fs';
import { removeObjects, removeRules } from './objects.js';
import { errorLine } from '../base/errors.js';
import type { OpLog } from '../state/log.js';
import { netnsId, pidNetnsPath } from '../net/netns.js';
import { sameProcess } from '../base/proc.js';
import type { ContainerRecord, Db } from '../state/store.js';

export function isAlive(c: ContainerRecord): boolean {
  if (c.damaged) return false;
  if (c.mode === 'tap') {
    // QEMU named by pid + start time; older records only had the socket.
    if (c.pid && c.start !== undefined) return sameProcess(c.pid, c.start);
    return Boolean(c.vm && existsSync(c.vm.qmp));
  }
  // A runtime's namespace file (CNI): alive while it still is that namespace.
  if (c.nsPath) return Boolean(c.netns) && netnsId(c.nsPath) === c.netns;
  return Boolean(c.pid && c.netns && sameProcess(c.pid, c.start) && netnsId(pidNetnsPath(c.pid)) === c.netns);
}

/** A live sharer of `owner`'s namespace that can take the network over, if any. */
export function heirOf(db: Db, owner: ContainerRecord): ContainerRecord | undefined {
  if (owner.mode !== 'veth' || !owner.netns) return undefined;
  return Object.values(db.containers).find((c) => c.sharedWith === owner.id && c.netns === owner.netns && isAlive(c));
}

/**
 * Take `rec` out of the state. When a live sharer inherits the network, the
 * record moves to it and nothing in the kernel is removed: returns the heir's
 * new record.
 */
export function forget(db: Db, rec: ContainerRecord): ContainerRecord | null {
  delete db.containers[rec.id];
  const heir = heirOf(db, rec);
  if (!heir) {
    for (const c of Object.values(db.containers)) if (c.sharedWith === rec.id) delete c.sharedWith;
    return null;
  }
  const next: ContainerRecord = { ...rec, id: heir.id, createdAt: heir.createdAt, setupPid: heir.setupPid };
  for (const k of ['pid', 'start', 'bundle'] as const) {
    if (heir[k] !== undefined) (next as unknown as Record<string, unknown>)[k] = heir[k]; // the heir's own identity
    else delete next[k];
  }
  delete next.sharedWith;
  db.containers[heir.id] = next;
  for (const c of Object.values(db.containers)) if (c.sharedWith === rec.id) c.sharedWith = heir.id;
  return next;
}

export interface Reclaimed {
  id: string;
  why: string;
  /** Kernel objects that would not go (kept out of the state anyway; gc's orphan pass finds them by name). */
  error?: string;
}

export class Reclaimer {
  private readonly queue: { rec: ContainerRecord; why: string; heir: ContainerRecord | null }[] = [];
  readonly done: Reclaimed[] = [];

  constructor(
    private readonly db: Db,
    private readonly stateDir: string,
    /** Who reclaims: a container id, or 'gc'. */
    private readonly by: string,
    private readonly log?: OpLog,
  ) {}

  /**
   * The live record really in the way: `c` when it is alive, else the live
   * sharer that inherits its network; null when `c` was dead and nobody
   * inherits (it is taken out of the state and queued for removal).
   */
  blocks(c: ContainerRecord, why: string): ContainerRecord | null {
    const queued = this.queue.find((q) => q.rec === c);
    if (queued) return queued.heir;
    if (isAlive(c)) return c;
    const heir = forget(this.db, c);
    this.queue.push({ rec: c, why, heir });
    return heir;
  }

  /**
   * Take `c` out whether it is alive or not (a CNI runtime's GC says it is
   * not valid any more); queued for removal like a dead one.
   */
  evict(c: ContainerRecord, why: string): void {
    if (this.queue.some((q) => q.rec === c)) return;
    const heir = forget(this.db, c);
    this.queue.push({ rec: c, why, heir });
  }

  get pending(): number {
    return this.queue.length;
  }

  /** Remove the queued records' kernel objects (caller still holds the lock) and log each. */
  async finish(): Promise<Reclaimed[]> {
    const batch = this.queue.splice(0);
    const removed = batch.filter((b) => b.heir === null).map((b) => b.rec);
    // All their ports chains and port guards at once; a failure there is each one's error.
    const ports = await removeRules(this.stateDir, removed).then(() => undefined, (e: unknown) => errorLine(e));
    await Promise.all(
      batch.map(async ({ rec, why, heir }) => {
        const remove = heir === null;
        const r: Reclaimed = { id: rec.id, why };
        try {
          const extras = remove ? await removeObjects(rec, { stateDir: this.stateDir, vmAlive: false, skipRules: true, sandboxLockWaitMs: 0 }) : undefined;
          if (extras || (remove && ports)) r.error = extras ?? ports;
        } catch (e) {
          r.error = errorLine(e);
        }
        this.log?.write({ op: 'reclaim', id: rec.id, by: this.by, why, ok: !r.error, ...(r.error ? { error: r.error } : {}), ...(heir ? { handedOverTo: heir.id } : {}) });
        this.done.push(r);
      }),
    );
    return batch.map((b) => this.done.find((d) => d.id === b.rec.id)!);
  }
}
