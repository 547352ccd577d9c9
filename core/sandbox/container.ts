/**
 * A container sandbox's network, as the hook sets it up. Setup opens the
 * container's network namespace once, then decides and records under the
 * state lock (claim.ts), reclaiming dead records that stand in its way, then
 * does the kernel work unlocked in as few execs as possible; any failure
 * tears down what was recorded (teardown.ts). A VM sandbox goes to vm.ts.
 */
import { deleteLink, linkExists } from '../net/bridge.js';
import { gatewayOf, intToIp, parseSubnet } from '../base/cidr.js';
import { bigToIp6, gateway6Of, parseSubnet6 } from '../base/cidr6.js';
import { errorLine, OcinetError } from '../base/errors.js';
import type { OpLog } from '../state/log.js';
import { containerMac, hostVethMac, hostVethName, stateId } from '../state/names.js';
import { ipBatch, ipBatchIn, openContainerNetns, type NetnsHandle } from '../net/netns.js';
import { Reclaimer } from './reclaim.js';
import { saveDb, type ContainerRecord, type Db } from '../state/store.js';
import { portSysctls } from '../net/sysctl.js';
import { containerLines, hostLines, type VethPlan } from '../net/veth.js';
import type { SetupRequest } from '../input/request.js';
import { addExtras, assertNew, claim, decide, firewall, resultOf, type SetupResult } from './claim.js';
import { teardownContainer } from './teardown.js';
import { setupVm } from './vm.js';

/**
 * The early attempt at the host side of the veth: true when it made the pair.
 * When a later line failed (the bridge went meanwhile), the pair it did make is
 * removed at once; when the first failed, nothing was made, and a link of that
 * name, if any, belongs to someone else (a record with this id): left alone.
 */
async function makeVeth(plan: VethPlan): Promise<boolean> {
  try {
    await ipBatch(hostLines(plan));
    return true;
  } catch (e) {
    if (/Command failed -:([2-9]|\d\d)$/.test(errorLine(e))) await deleteLink(plan.hostVeth).catch(() => undefined);
    return false;
  }
}

export async function setupContainer(req: SetupRequest, log?: OpLog): Promise<SetupResult> {
  if (req.mode === 'tap') return setupVm(req, log);
  // The pid is trusted once, here: everything after goes through ns.path.
  const ns = openContainerNetns(req.pid);
  try {
    return await setupVeth(req, ns, log);
  } finally {
    ns.close();
  }
}

/** The live record owning namespace `nsId`, reclaiming dead ones that claim it (their inode came back). */
function namespaceOwner(db: Db, nsId: string, id: string, reclaim: Reclaimer): ContainerRecord | undefined {
  for (;;) {
    const c = Object.values(db.containers).find((r) => r.netns === nsId && r.mode === 'veth');
    if (!c) return undefined;
    const live = reclaim.blocks(c, `network namespace ${nsId} is now ${id}'s`);
    if (live) return live;
  }
}

/** A veth sandbox's network in an opened namespace (the hook's, from a pid; ocinet-cni's, from a path). */
export async function setupVeth(req: SetupRequest, ns: NetnsHandle, log?: OpLog): Promise<SetupResult> {
  const sn = parseSubnet(req.subnet);
  const gateway = intToIp(gatewayOf(sn));
  const sn6 = req.subnet6 ? parseSubnet6(req.subnet6) : undefined;
  const gateway6 = sn6 ? bigToIp6(gateway6Of(sn6)) : undefined;
  log?.step('check');

  const sid = stateId(req.stateDir);
  const plan: VethPlan = { hostVeth: hostVethName(req.id, sid), iface: req.iface, mac: containerMac(req.id, sid), hostMac: hostVethMac(req.id, sid), mtu: req.mtu, netns: ns.path, bridge: req.bridge };
  // The veth pair does not depend on the address: when the bridge is already
  // there, make it while the lock is taken and the address chosen. A veth made
  // here is removed again if the locked phase refuses the container.
  const early = linkExists(req.bridge) ? makeVeth(plan) : Promise.resolve(false);
  const dropEarly = async (): Promise<void> => {
    if (await early) await deleteLink(plan.hostVeth);
  };
  const identity = ns.identity;

  let rec: ContainerRecord;
  try {
    rec = await decide(req, log, async (db, reclaim) => {
      // The lock may have taken a while: the container must still be the process we opened.
      if (!ns.alive()) throw new OcinetError('ENOTFOUND', `${ns.identity.pid ? `process ${ns.identity.pid} exited` : `${ns.what} went away`} while the hook waited for the state lock`);
      assertNew(db, req.id, reclaim);
      const owner = req.cni ? undefined : namespaceOwner(db, ns.id, req.id, reclaim);
      if (owner) {
        // Namespace sharing: the namespace already has our eth0; record, change nothing.
        // Requests of the joiner's own cannot be honoured: say so rather than drop them.
        if (req.requested?.ports) {
          throw new OcinetError('ECONFLICT', `container ${req.id} joins the network namespace of ${owner.id}: publish its ports on ${owner.id}`);
        }
        if (req.interfaces?.length || req.routes?.length || req.ipvs) {
          throw new OcinetError('ECONFLICT', `container ${req.id} joins the network namespace of ${owner.id}: add its interfaces and routes on ${owner.id}`);
        }
        if (req.requested?.ip && req.ip !== owner.ip) {
          throw new OcinetError('ECONFLICT', `container ${req.id} joins the network namespace of ${owner.id}, whose address is ${owner.ip}, not ${req.ip}`);
        }
        const shared: ContainerRecord = {
          id: req.id, mode: 'shared', bridge: owner.bridge, ip: owner.ip!, prefix: owner.prefix!, iface: owner.iface!,
          ports: [], ...identity, sharedWith: owner.id, createdAt: new Date().toISOString(), setupPid: process.pid,
          ...(req.bundle ? { bundle: req.bundle } : {}),
        };
        db.containers[req.id] = shared;
        saveDb(req.stateDir, db);
        return shared;
      }
      return claim(db, req, sn.prefix, gateway, { mode: 'veth', hostVeth: plan.hostVeth, mac: plan.mac, ...identity }, reclaim);
    });
  } catch (e) {
    await dropEarly();
    throw e;
  }
  log?.step('ipam');
  if (rec.mode === 'shared') {
    await dropEarly();
    return resultOf(rec, gateway, gateway6);
  }
  const ip = rec.ip!;

  try {
    // The early attempt failed or did not run (no bridge yet, or it went meanwhile): now it is there.
    const links = early
      .then(async (made) => {
        if (!made) await ipBatch(hostLines(plan));
      })
      .then(() => {
        portSysctls(plan.hostVeth);
        log?.step('host');
      })
      .then(() => ipBatchIn(ns.path, containerLines(req.iface, ip, sn.prefix, gateway, rec.ip6 && sn6 ? { ip: rec.ip6, prefix: sn6.prefix, gateway: gateway6! } : undefined)))
      .then(() => log?.step('container'));
    // Firewall rules do not depend on the links: apply them while the links are made.
    const done = await Promise.allSettled([links, firewall(rec, req)]);
    for (const d of done) if (d.status === 'rejected') throw d.reason;
    await addExtras(rec, req, ns.path);
    log?.step('extra');
  } catch (e) {
    await teardownContainer(req.id, req, { bundle: req.bundle }).catch(() => undefined);
    throw e;
  }
  return resultOf(rec, gateway, gateway6);
}
