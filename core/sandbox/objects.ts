/**
 * The kernel objects a container record stands for (host veth or VM TAP,
 * its rules, kata-network extras) and their removal, shared by teardown,
 * the reclaim of dead records and gc.
 */
import { deleteLink } from '../net/bridge.js';
import { errorLine } from '../base/errors.js';
import { byBackend } from '../firewall/backends.js';
import { ipvsadm } from '../kata/ipvs.js';
import { parseParameters } from '../input/ipvs-rules.js';
import { loadRecord, sharingAgent, targetKey, vmTarget, type Target } from '../kata/records.js';
import { releaseSandbox } from '../kata/network.js';
import { type AddedIface } from '../input/iface.js';
import { stateId, vmMac } from '../state/names.js';
import { pidNetnsPath } from '../net/netns.js';
import type { ContainerRecord } from '../state/store.js';
import { vmDelIface } from '../vm/hotplug.js';

/** The kata-network target of a record; `nsPath` overrides the pid's path (setup holds the namespace open). */
export function targetOf(r: ContainerRecord, nsPath?: string): Target | null {
  if (r.mode === 'tap') return r.vm ? vmTarget(r.vm, r.id) : null;
  if (!r.netns || !(r.pid || r.nsPath)) return null;
  const t: Target = { key: targetKey(r.netns), nsPath: nsPath ?? r.nsPath ?? pidNetnsPath(r.pid!), nsId: r.netns, containerId: r.id };
  if (r.pid) t.pid = r.pid;
  return t;
}

/**
 * A TAP-mode sandbox's NIC, from its record: QEMU's ids follow from the name,
 * the TAP's name (oct + hash of the id) is ocinet's, so it is ours to delete.
 */
export function vmNicOf(r: ContainerRecord): AddedIface & { createdTap: boolean } {
  return { device: r.hostVeth!, name: r.iface!, hwAddr: vmMac(r.id), mtu: r.mtu!, kind: 'tap', queues: 0, linkType: 'tap', createdTap: true };
}

/** Unplug a VM sandbox's NIC (when QEMU is still there) and remove its TAP. */
async function unplugVm(rec: ContainerRecord, vmAlive: boolean): Promise<void> {
  try {
    if (rec.vm && vmAlive) await vmDelIface(rec.vm, vmNicOf(rec));
  } finally {
    // Even when the guest does not let go, the host side goes.
    if (rec.hostVeth) await deleteLink(rec.hostVeth);
  }
}

/**
 * Remove the records' own rules (ports, port guards), each backend's all at
 * once (reclaim and gc remove many): one exec per tool where the backend can.
 */
export async function removeRules(stateDir: string, recs: ContainerRecord[]): Promise<void> {
  const sid = stateId(stateDir);
  const groups = byBackend(recs.filter((r) => r.mode !== 'shared'));
  const done = await Promise.allSettled([...groups].map(([fw, rs]) => fw.removeContainers(sid, rs)));
  for (const d of done) if (d.status === 'rejected') throw d.reason;
}

export interface RemoveOptions {
  stateDir: string;
  /**
   * How long to wait for the sandbox's own lock. Reclaim holds the state lock
   * and must not wait on a slow sandbox: 0, and what it cannot take now is
   * left (in its sandbox record) for gc.
   */
  sandboxLockWaitMs?: number;
  /** False for a reclaimed VM sandbox: its QEMU is gone, talk to nobody. */
  vmAlive: boolean;
  /** The caller removes the rules itself, for many records at once (removeRules). */
  skipRules?: boolean;
}

/**
 * Remove what `rec` made. Interfaces added through kata-network that will not
 * go do not keep the rest: their error is returned after the rest is done.
 */
export async function removeObjects(rec: ContainerRecord, o: RemoveOptions): Promise<string | undefined> {
  if (rec.mode === 'shared') return undefined;
  let extrasError: string | undefined;
  const found = targetOf(rec);
  if (found) {
    const t = sharingAgent(found, o.stateDir);
    // A VM outlives its network: take back the IPVS rules given to it.
    if (t.vm && o.vmAlive && loadRecord(o.stateDir, t).ipvsRules) {
      await ipvsadm(t, parseParameters('--clear'), o.stateDir).catch(() => undefined);
    }
    await releaseSandbox(o.stateDir, t, o.sandboxLockWaitMs).catch((e: unknown) => {
      extrasError = errorLine(e);
    });
  }
  // Independent kernel objects: remove them side by side.
  const link = rec.mode === 'tap' ? unplugVm(rec, o.vmAlive) : rec.hostVeth ? deleteLink(rec.hostVeth) : undefined;
  const done = await Promise.allSettled([o.skipRules ? undefined : removeRules(o.stateDir, [rec]), link]);
  for (const d of done) if (d.status === 'rejected') throw d.reason;
  return extrasError;
}
