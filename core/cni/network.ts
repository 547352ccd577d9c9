/**
 * The network-wide commands of CNI 1.1. GC: every attachment of this
 * network (by its name) that the runtime no longer lists goes, alive or
 * not, through the reclaim code `ocinet gc` uses; it goes on past a
 * failure and reports them all. Hook containers and other networks'
 * attachments are never touched. STATUS: whether ADD can work (the
 * doctor's required checks) and whether existing attachments are served.
 */
import { doctor } from '../admin/doctor.js';
import { errorLine } from '../base/errors.js';
import { CniError, CNI_CODE, type CniConfig } from '../input/cni.js';
import { firewallOf } from '../firewall/backends.js';
import { isAlive, Reclaimer } from '../sandbox/reclaim.js';
import { loadForChange } from '../sandbox/recover.js';
import { releaseNetwork } from '../sandbox/teardown.js';
import { withLock } from '../state/lock.js';
import type { OpLog } from '../state/log.js';
import { stateId } from '../state/names.js';
import { cniRecordId, loadDb, saveDb } from '../state/store.js';

/** ocinet's own code for "GC could not remove every stale attachment". */
export const GC_INCOMPLETE = 111;

export interface CniGcReport {
  removed: string[];
  errors: string[];
}

export async function cniGc(cfg: CniConfig, log?: OpLog): Promise<CniGcReport> {
  const valid = new Set((cfg.valid ?? []).map((a) => cniRecordId(a.containerID, a.ifname)));
  const report = await withLock(cfg.stateDir, async (): Promise<CniGcReport> => {
    const db = await loadForChange(cfg.stateDir, log);
    const reclaim = new Reclaimer(db, cfg.stateDir, 'cni-gc', log);
    const bridges = new Set<string>();
    for (const c of Object.values(db.containers)) {
      if (c.cni?.network !== cfg.name || valid.has(c.id)) continue;
      reclaim.evict(c, `not among the runtime's valid attachments of CNI network ${cfg.name}`);
      bridges.add(c.bridge);
    }
    const done = await reclaim.finish();
    const out: CniGcReport = { removed: done.map((d) => d.id), errors: done.filter((d) => d.error).map((d) => `${d.id}: ${d.error}`) };
    if (done.length === 0) return out;
    // Its network goes with its last container, as after a DEL.
    for (const b of bridges) {
      await releaseNetwork(db, b, cfg.stateDir, cfg.keepBridge, reclaim, 'GC').catch((e: unknown) => out.errors.push(`network ${b}: ${errorLine(e)}`));
    }
    saveDb(cfg.stateDir, db);
    return out;
  });
  log?.write({ op: 'cni-gc', id: cfg.name, ok: report.errors.length === 0, removed: report.removed.length });
  if (report.errors.length) {
    throw new CniError(GC_INCOMPLETE, `GC of network ${cfg.name}: ${report.errors.length} of ${report.removed.length} attachments left objects behind: ${report.errors.join('; ')}`, 'EEXEC');
  }
  return report;
}

export async function cniStatus(cfg: CniConfig): Promise<void> {
  const failed = (await doctor(cfg.stateDir)).filter((c) => c.required && !c.ok);
  if (failed.length) {
    throw new CniError(CNI_CODE.notAvailable, `ocinet-cni cannot add containers: ${failed.map((c) => `${c.name}: ${c.detail}${c.fix ? ` (${c.fix})` : ''}`).join('; ')}`, 'EKERNEL');
  }
  // Attachments that run while their network's rules are gone (someone flushed them) are cut off.
  const db = loadDb(cfg.stateDir); // the doctor found it usable
  const net = db.networks[cfg.bridge];
  if (!net || !Object.values(db.containers).some((c) => c.bridge === net.bridge && isAlive(c))) return;
  const fw = firewallOf(net.firewall);
  if (!(await fw.networkPresent({ sid: stateId(cfg.stateDir), bridge: net.bridge, subnet: net.subnet }))) {
    throw new CniError(CNI_CODE.limitedConnectivity, `network ${net.bridge}'s ${fw.backend} rules are missing: its containers may be cut off (run ocinet reload --state-dir ${cfg.stateDir})`, 'EKERNEL');
  }
}
