/**
 * Reload: `iptables -F`, `nft flush ruleset` or a firewall manager's restart
 * takes container rules away. This puts back, from the state, every network's
 * rules (and kernel switches) and every live container's own rules, on each
 * one's backend, idempotently: what is still there is not doubled.
 */
import { errorLine } from '../base/errors.js';
import { byBackend, firewallOf } from '../firewall/backends.js';
import { linkExists } from '../net/bridge.js';
import { networkSysctls } from '../net/sysctl.js';
import { isAlive } from '../sandbox/reclaim.js';
import { loadForChange } from '../sandbox/recover.js';
import { withLock } from '../state/lock.js';
import type { OpLog } from '../state/log.js';
import { stateId } from '../state/names.js';
import { ensureStateDir, type ContainerRecord, type Db } from '../state/store.js';

export interface ReloadReport {
  networks: string[];
  containers: string[];
  /** What could not be put back, and why (reload goes on with the rest). */
  errors: string[];
}

export async function reload(stateDir: string, log?: OpLog): Promise<ReloadReport> {
  ensureStateDir(stateDir);
  const report: ReloadReport = { networks: [], containers: [], errors: [] };
  await withLock(stateDir, async () => {
    const db = await loadForChange(stateDir, log);
    const sid = stateId(stateDir);
    for (const n of Object.values(db.networks)) {
      try {
        // As if it were the only network: the shared parts are checked and made again too.
        if (linkExists(n.bridge)) networkSysctls(n.bridge, n.createdBridge, n.subnet6 !== undefined);
        await firewallOf(n.firewall).installNetwork({ sid, bridge: n.bridge, subnet: n.subnet, ...(n.subnet6 ? { subnet6: n.subnet6 } : {}) }, 0);
        report.networks.push(n.bridge);
      } catch (e) {
        report.errors.push(`network ${n.bridge}: ${errorLine(e)}`);
      }
    }
    // Live containers with a port of their own; dead ones are gc's.
    const live = Object.values(db.containers).filter((c) => c.mode !== 'shared' && c.hostVeth && c.ip && db.networks[c.bridge] && isAlive(c));
    for (const [fw, recs] of byBackend(live)) {
      try {
        await fw.reapplyContainers(sid, recs, (r) => subnetOf(db, r));
        report.containers.push(...recs.map((r) => r.id));
      } catch (e) {
        report.errors.push(`containers on ${fw.backend}: ${errorLine(e)}`);
      }
    }
  });
  log?.write({ op: 'reload', ok: report.errors.length === 0, networks: report.networks.length, containers: report.containers.length });
  return report;
}

const subnetOf = (db: Db, r: ContainerRecord): string => db.networks[r.bridge]!.subnet;

/** Networks of the state whose rules are not all there (doctor: run `ocinet reload`). */
export async function missingRules(db: Db, stateDir: string): Promise<string[]> {
  const sid = stateId(stateDir);
  const out: string[] = [];
  for (const n of Object.values(db.networks)) {
    const fw = firewallOf(n.firewall);
    if (!(await fw.networkPresent({ sid, bridge: n.bridge, subnet: n.subnet }))) out.push(`${n.bridge} (${fw.backend})`);
  }
  return out;
}
