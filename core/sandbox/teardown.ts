/**
 * Teardown, keyed by container id: acts only on a record its own container
 * made, is idempotent, and forgets the record last; the network goes with
 * its last container.
 */
import { createdByOcinet, deleteLink, linkExists } from '../net/bridge.js';
import { removeObjects } from './objects.js';
import { OcinetError } from '../base/errors.js';
import { withLock } from '../state/lock.js';
import type { OpLog } from '../state/log.js';
import { firewallOf } from '../firewall/backends.js';
import { othersOn } from './claim.js';
import { hostVethName, stateId } from '../state/names.js';
import { forget, isAlive, Reclaimer } from './reclaim.js';
import { loadForChange } from './recover.js';
import { recoveredRecord, saveDb, type ContainerRecord, type Db } from '../state/store.js';
import type { NetworkOptions } from '../input/request.js';

export interface TeardownResult {
  id: string;
  removed: boolean;
  bridgeRemoved: boolean;
  /** Set when the record under this id belongs to another container (another runtime's): nothing was done. */
  skipped?: string;
}

/** What the runtime's state says of the container being torn down. */
export interface Requester {
  bundle?: string;
  /** 0 or absent at poststop (runc gives none, crun 0). */
  pid?: number;
  /** ocinet-cni's DEL: the network whose attachment it is. */
  cniNetwork?: string;
}

/** Why `rec` is not the record of the container asking, or null when it is. */
function notOwner(rec: ContainerRecord, who: Requester): string | null {
  if (who.cniNetwork !== undefined && rec.cni && rec.cni.network !== who.cniNetwork) return `its record is an attachment of CNI network ${rec.cni.network}, not ${who.cniNetwork}`;
  if (who.cniNetwork !== undefined && !rec.cni && !rec.recovered) return 'its record is not a CNI attachment';
  if (who.bundle && rec.bundle && who.bundle !== rec.bundle) return `its record belongs to bundle ${rec.bundle}, not ${who.bundle}`;
  if (who.pid && rec.pid && rec.mode !== 'tap' && who.pid !== rec.pid) return `its record belongs to process ${rec.pid}, not ${who.pid}`;
  return null;
}

export async function teardownContainer(
  id: string, o: Omit<NetworkOptions, 'iface' | 'mtu' | 'subnet'>, who: Requester = {}, log?: OpLog,
): Promise<TeardownResult> {
  type Lookup = { rec?: ContainerRecord; foreign?: string; handedOver?: boolean };
  const { rec, foreign, handedOver } = await withLock(o.stateDir, async (): Promise<Lookup> => {
    const db = await loadForChange(o.stateDir, log);
    const rec = db.containers[id] ?? recoveredRecord(db, id, stateId(o.stateDir));
    if (!rec) return {};
    const foreign = notOwner(rec, who);
    if (foreign) return { foreign };
    // A sharer that is still alive inherits the namespace's network instead of losing it.
    if (!forget(db, { ...rec })) return { rec };
    saveDb(o.stateDir, db);
    return { handedOver: true };
  });
  log?.step('lookup');
  if (foreign) {
    log?.write({ op: 'teardown-skipped', id, ok: true, why: foreign });
    return { id, removed: false, bridgeRemoved: false, skipped: foreign };
  }
  if (handedOver) return { id, removed: true, bridgeRemoved: false };
  let extrasError: string | undefined;
  if (rec) {
    extrasError = await removeObjects(rec, { stateDir: o.stateDir, vmAlive: rec.mode !== 'tap' || isAlive(rec) });
    log?.step('kernel');
  } else {
    await deleteLink(hostVethName(id, stateId(o.stateDir))); // a setup killed before it could record anything more
  }
  const bridge = rec?.bridge || o.bridge;
  const bridgeRemoved = await withLock(o.stateDir, async () => {
    const db = await loadForChange(o.stateDir, log);
    const reclaim = new Reclaimer(db, o.stateDir, id, log);
    // Only the record this teardown removed: a new container of the same id may have come meanwhile.
    if (rec && db.containers[rec.id]?.createdAt === rec.createdAt) delete db.containers[rec.id];
    const removed = await releaseNetwork(db, bridge, o.stateDir, o.keepBridge, reclaim, id);
    if (rec || removed || reclaim.done.length) saveDb(o.stateDir, db);
    return removed;
  });
  log?.step('release');
  if (extrasError) throw new OcinetError('EEXEC', extrasError);
  return { id, removed: Boolean(rec), bridgeRemoved };
}

/**
 * After `who` left bridge `bridge`: its network goes unless a live container
 * is still on it (dead records on it do not keep it: they are reclaimed here)
 * or `keepBridge`. Caller holds the lock; says whether it went.
 */
export async function releaseNetwork(db: Db, bridge: string, stateDir: string, keepBridge: boolean, reclaim: Reclaimer, who: string): Promise<boolean> {
  const left = Object.values(db.containers).some((c) => c.bridge === bridge && reclaim.blocks(c, `bridge ${bridge} kept for it after ${who} left`) !== null);
  await reclaim.finish();
  return !left && !keepBridge && (await removeNetwork(db, bridge, stateDir));
}

/**
 * Remove a network nobody uses: its rules, and its bridge if ocinet made it
 * (known from the state, or from the bridge's alias after a crash). Caller holds the lock.
 */
export async function removeNetwork(db: Db, bridge: string, stateDir: string): Promise<boolean> {
  const net = db.networks[bridge];
  const sid = stateId(stateDir);
  const ours = net?.createdBridge || (linkExists(bridge) && (await createdByOcinet(bridge, sid)));
  if (!net && !ours) return false;
  const fw = firewallOf(net?.firewall);
  await fw.removeNetwork({ sid, bridge, ...(net ? { subnet: net.subnet } : {}), ...(net?.subnet6 ? { subnet6: net.subnet6 } : {}) }, othersOn(db, bridge, fw.backend));
  if (ours) await deleteLink(bridge);
  delete db.networks[bridge];
  return true;
}
