/**
 * `ocinet publish` / `ocinet unpublish`: a running container's published
 * ports changed in place. Under the state lock: the record found, checked
 * (its own network, alive), the ports checked against the other live
 * records, the kernel changed through the record's backend (all at once or
 * not at all), then the record saved. Nothing changes when any step refuses.
 */
import { errorLine, OcinetError } from '../base/errors.js';
import { firewallOf } from '../firewall/backends.js';
import { checkPortConflicts, flushStaleUdp, formatPort, samePort } from '../firewall/ports.js';
import { withLock } from '../state/lock.js';
import type { OpLog } from '../state/log.js';
import { portsChainOf, stateId } from '../state/names.js';
import { ensureStateDir, findContainer, saveDb, type ContainerRecord, type PortMapping } from '../state/store.js';
import { isAlive, Reclaimer } from './reclaim.js';
import { loadForChange } from './recover.js';

export interface PortsChange {
  id: string;
  /** The container's published ports after the change. */
  ports: PortMapping[];
}

/** Add (`publish`) or remove (`unpublish`) `specs` on the running container `idOrPrefix`. */
export async function changePorts(stateDir: string, idOrPrefix: string, op: 'publish' | 'unpublish', specs: PortMapping[], log?: OpLog): Promise<PortsChange> {
  ensureStateDir(stateDir);
  if (specs.length === 0) throw new OcinetError('EINPUT', `${op}: no port named`);
  const sid = stateId(stateDir);
  const result = await withLock(stateDir, async () => {
    const db = await loadForChange(stateDir, log);
    const rec = findContainer(db, idOrPrefix, sid);
    if (rec.mode === 'shared') {
      throw new OcinetError('ECONFLICT', `container ${rec.id} shares the network namespace of ${rec.sharedWith ?? 'another container'}: ${op} its ports there`);
    }
    if (rec.damaged) throw new OcinetError('ESTATE', `container ${rec.id}'s record is damaged (${rec.damaged}): run 'ocinet gc'`);
    if (!isAlive(rec)) throw new OcinetError('ENOTFOUND', `container ${rec.id} is not running (its process is gone): run 'ocinet gc'`);
    const net = db.networks[rec.bridge];
    if (!rec.ip || !net) throw new OcinetError('ESTATE', `container ${rec.id} has no address on a network in ocinet's state`);

    const before = rec.ports;
    let after: PortMapping[];
    let saved = false;
    const reclaim = new Reclaimer(db, stateDir, rec.id, log);
    try {
      if (op === 'publish') {
        const again = specs.find((p) => before.some((q) => samePort(p, q)));
        if (again) throw new OcinetError('ECONFLICT', `${formatPort(again)} is already published by container ${rec.id}`);
        after = [...before, ...specs];
        checkPortConflicts(after, db, rec.id, reclaim.blocks.bind(reclaim));
      } else {
        after = [...before];
        for (const p of specs) {
          const i = after.findIndex((q) => samePort(p, q));
          if (i < 0) throw new OcinetError('EINPUT', `${formatPort(p)} is not published by container ${rec.id} (${before.map(formatPort).join(', ') || 'none is'})`);
          after.splice(i, 1);
        }
      }
      await reclaim.finish(); // dead records in the way: their rules go before these come
      const next: ContainerRecord = { ...rec, ports: after };
      const fw = firewallOf(rec.firewall);
      // An iptables record set up without ports has no chain yet: named as setup names it.
      if (fw.backend === 'iptables' && !next.chain) Object.assign(next, portsChainOf(rec.id, sid));
      await fw.setPorts(sid, next, before, net.subnet);
      db.containers[rec.id] = next;
      try {
        saveDb(stateDir, db);
        saved = true;
      } catch (e) {
        db.containers[rec.id] = rec;
        await fw.setPorts(sid, { ...next, ports: before }, after, net.subnet).catch(() => undefined);
        throw e;
      }
      return { id: rec.id, ports: after };
    } finally {
      // Records reclaimed on the way were dead either way: they leave the state also when this was refused.
      await reclaim.finish();
      if (reclaim.done.length && !saved) saveDb(stateDir, db);
    }
  }).catch((e: unknown) => {
    log?.write({ op, id: idOrPrefix, ok: false, error: errorLine(e) });
    throw e;
  });
  if (op === 'publish') await flushStaleUdp(specs);
  log?.write({ op, id: result.id, ok: true, ports: specs.map(formatPort) });
  return result;
}
