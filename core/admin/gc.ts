/**
 * Garbage collection: the crash and reboot case. Every record is asked
 * whether it is alive, through the same reclaim code a setup uses for the
 * dead records in its way; veths, ports chains and bridges this state dir
 * provably made (its bridge alias, its identity in the chain's name, a veth
 * on its bridge) that no record owns are removed, another state dir's
 * never; temp files of dead writers are deleted, and the sockets of agent
 * connection holders that died. A state file damaged
 * beyond reading is rebuilt from the kernel first.
 */
import { closeSync, readdirSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { getSystemErrorName } from 'node:util';
import { native } from '../base/native.js';
import { bridgeAlias } from '../net/bridge.js';
import { errorLine } from '../base/errors.js';
import { firewallOf } from '../firewall/backends.js';
import { hasProgram, run } from '../base/exec.js';
import { tableName } from '../firewall/nftables/backend.js';
import { othersOn } from '../sandbox/claim.js';
import { allRecords, recordTarget, sandboxAlive } from '../kata/records.js';
import { hasRecord } from '../kata/records.js';
import { releaseSandbox } from '../kata/network.js';
import { deleteLinks, listLinks } from '../net/links.js';
import { acquire, withLock } from '../state/lock.js';
import type { OpLog } from '../state/log.js';
import { Reclaimer } from '../sandbox/reclaim.js';
import { stateId } from '../state/names.js';
import { loadForChange } from '../sandbox/recover.js';
import { removeNetwork } from '../sandbox/teardown.js';
import { BACKENDS, ensureStateDir, saveDb } from '../state/store.js';

export { isAlive } from '../sandbox/reclaim.js';

export interface GcReport {
  containers: string[];
  links: string[];
  chains: string[];
  bridges: string[];
  tempFiles: string[];
  sandboxes: string[];
  /** What could not be removed, and why (gc goes on with the rest). */
  errors: string[];
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Whether this state dir has nftables tables (a listing: removing absent ones would cost a deleting transaction). */
async function nftTablesOf(sid: string): Promise<boolean> {
  return (await run('nft', ['list', 'tables'], { allowFail: true })).stdout.includes(` ${tableName(sid)}\n`);
}

export async function gc(stateDir: string, log?: OpLog): Promise<GcReport> {
  ensureStateDir(stateDir);
  const report: GcReport = { containers: [], links: [], chains: [], bridges: [], tempFiles: [], sandboxes: [], errors: [] };
  await withLock(stateDir, async () => {
    const db = await loadForChange(stateDir, log);
    const reclaim = new Reclaimer(db, stateDir, 'gc', log);
    for (const c of Object.values(db.containers)) {
      if (db.containers[c.id] === c) reclaim.blocks(c, c.damaged ? `damaged record: ${c.damaged}` : 'its process or network namespace is gone');
    }
    for (const r of await reclaim.finish()) {
      report.containers.push(r.id);
      if (r.error) report.errors.push(`container ${r.id}: ${r.error}`);
    }

    const sid = stateId(stateDir);
    const records = Object.values(db.containers);
    const links = await listLinks();
    // This state dir's bridges: its records, and those carrying its alias (a bridge has one state dir).
    const bridges = new Set([...Object.keys(db.networks), ...links.filter((l) => l.kind === 'bridge' && l.alias === bridgeAlias(sid)).map((l) => l.name)]);
    const owned = new Set(records.map((c) => c.hostVeth));
    // A veth is provably ours only on one of our bridges; any other `ocv…` may be another state dir's.
    const orphans = links.filter((l) => /^ocv[0-9a-f]{10}$/.test(l.name) && !owned.has(l.name) && l.master !== undefined && bridges.has(l.master));
    await deleteLinks(orphans.map((l) => l.index));
    report.links = orphans.map((l) => l.name);

    // Per-container rules named with this state dir's identity that no record holds, on either backend.
    for (const b of BACKENDS) {
      if (b === 'nftables' && !hasProgram('nft')) continue;
      report.chains.push(...(await firewallOf(b).purgeStale(sid, records)));
    }

    const used = new Set(records.map((c) => c.bridge));
    for (const b of bridges) {
      if (!used.has(b) && (await removeNetwork(db, b, stateDir))) report.bridges.push(b);
    }
    // No network of this state dir on nftables: its tables go (made again by the next network).
    if (hasProgram('nft') && othersOn(db, '', 'nftables') === 0 && (await nftTablesOf(sid))) await firewallOf('nftables').removeNetwork({ sid, bridge: '' }, 0);
    saveDb(stateDir, db);
  });
  // kata-network records of sandboxes whose namespace (or QEMU) is gone: moved devices come home.
  for (const r of allRecords(stateDir)) {
    if (sandboxAlive(r)) continue;
    const name = r.containerId ?? r.key;
    try {
      await releaseSandbox(stateDir, recordTarget(r));
      report.sandboxes.push(name);
    } catch (e) {
      report.errors.push(`sandbox ${name}: ${errorLine(e)}`);
    }
  }
  // Before the lock files below: a sandbox lock taken here for no record goes with them.
  report.tempFiles.push(...(await deadHolds(stateDir)));
  for (const f of readdirSync(stateDir)) {
    const m = /^state\.json\.(\d+)\.tmp$/.exec(f);
    if (m && !pidAlive(Number(m[1]))) {
      unlinkSync(join(stateDir, f));
      report.tempFiles.push(f);
    }
    // A sandbox's own lock file, once the sandbox has no record: removed while held. Waiters
    // open the path anew at every try (build/lock.c), so none is left holding the old file.
    const sb = /^lock\.sb-([A-Za-z0-9-]+)$/.exec(f);
    if (sb && !hasRecord(stateDir, sb[1]!)) {
      const held = await acquire(stateDir, 0, f).catch(() => null);
      if (!held) continue;
      if (!hasRecord(stateDir, sb[1]!)) {
        unlinkSync(join(stateDir, f));
        report.tempFiles.push(f);
      }
      await held.release();
    }
  }
  return report;
}

/**
 * The sockets of agent connection holders that were killed (core/vm/agent-hold.ts): no one
 * listens on them. Probed under the sandbox's lock, which a call that makes a holder holds.
 */
async function deadHolds(stateDir: string): Promise<string[]> {
  const dir = join(stateDir, 'agent');
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const gone: string[] = [];
  for (const f of names) {
    const key = /^([A-Za-z0-9-]+)\.sock$/.exec(f)?.[1];
    if (!key) continue;
    const held = await acquire(stateDir, 0, `lock.sb-${key}`).catch(() => null);
    if (!held) continue;
    try {
      // A live holder takes the probe for a borrower and is given back its connection at the close.
      const fd = native().agentConnect(join(dir, f), 100);
      if (fd >= 0) closeSync(fd);
      else if (getSystemErrorName(fd) === 'ECONNREFUSED') {
        unlinkSync(join(dir, f));
        gone.push(`agent/${f}`);
      }
    } finally {
      await held.release();
    }
  }
  return gone;
}
