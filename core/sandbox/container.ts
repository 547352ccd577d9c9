/**
 * A container sandbox's network, as the hook sets it up. Setup opens the
 * container's network namespace once, then decides and records under the
 * state lock (claim.ts), reclaiming dead records that stand in its way, then
 * does the kernel work unlocked, from its own process (rtnetlink and
 * libnftables, no program run when both are there); any failure
 * tears down what was recorded (teardown.ts). A VM sandbox goes to vm.ts.
 */
import { gatewayOf, intToIp, parseSubnet } from '../base/cidr.js';
import { parseSubnet6 } from '../base/cidr6.js';
import { OcinetError } from '../base/errors.js';
import type { OpLog } from '../state/log.js';
import { containerMac, hostVethMac, hostVethName, stateId } from '../state/names.js';
import { openContainerNetns, type NetnsHandle } from '../net/netns.js';
import { Reclaimer } from './reclaim.js';
import { saveDb, type ContainerRecord, type Db, type NetworkRecord } from '../state/store.js';
import { portSysctls } from '../net/sysctl.js';
import { configureInside, makeVeth, type VethPlan } from '../net/veth.js';
import type { SetupRequest } from '../input/request.js';
import { addExtras, assertNew, claim, decide, firewall, resultOf, type SetupResult } from './claim.js';
import { teardownContainer } from './teardown.js';
import { setupVm } from './vm.js';

export async function setupContainer(req: SetupRequest, log?: OpLog): Promise<SetupResult> {
  if (req.mode === 'tap') return setupVm(req, log);
  // The pid is trusted once, here: everything after goes through ns.path.
  const ns = openContainerNetns(req.pid);
  try {
    const { rec, net } = await attachVeth(req, ns, log);
    return resultOf(rec, net.gateway, net.gateway6);
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

/** What a setup made: the container's record and its network's, as the locked phase wrote them. */
export interface Attached {
  rec: ContainerRecord;
  net: NetworkRecord;
}

/** A veth sandbox's network in an opened namespace (the hook's; ocinet-cni's, from a path). */
export async function attachVeth(req: SetupRequest, ns: NetnsHandle, log?: OpLog): Promise<Attached> {
  const sn = parseSubnet(req.subnet);
  const gateway = intToIp(gatewayOf(sn));
  const sn6 = req.subnet6 ? parseSubnet6(req.subnet6) : undefined;
  log?.step('check');

  const sid = stateId(req.stateDir);
  const plan: VethPlan = { hostVeth: hostVethName(req.id, sid), iface: req.iface, mac: containerMac(req.id, sid), hostMac: hostVethMac(req.id, sid), mtu: req.mtu, nsFd: ns.fd, bridge: req.bridge };
  const identity = ns.identity;

  const { rec, net } = await decide(req, log, async (db, reclaim): Promise<Attached> => {
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
      return { rec: shared, net: networkOf(db, owner.bridge) };
    }
    const made = await claim(db, req, sn.prefix, gateway, { mode: 'veth', hostVeth: plan.hostVeth, mac: plan.mac, ...identity }, reclaim);
    return { rec: made, net: networkOf(db, req.bridge) };
  });
  log?.step('ipam');
  if (rec.mode === 'shared') return { rec, net };
  const addrs = [{ ip: rec.ip!, prefix: sn.prefix, gateway }, ...(rec.ip6 && sn6 && net.gateway6 ? [{ ip: rec.ip6, prefix: sn6.prefix, gateway: net.gateway6 }] : [])];

  try {
    // Firewall rules do not depend on the links: when nft runs as a program, it runs while the links are made.
    const rules = firewall(rec, req);
    const links = (async () => {
      makeVeth(plan);
      portSysctls(plan.hostVeth);
      log?.step('host');
      configureInside(ns.fd, req.iface, addrs);
      log?.step('container');
    })();
    const done = await Promise.allSettled([links, rules]);
    for (const d of done) if (d.status === 'rejected') throw d.reason;
    await addExtras(rec, req, ns.path);
    log?.step('extra');
  } catch (e) {
    await teardownContainer(req.id, req, { bundle: req.bundle }).catch(() => undefined);
    throw e;
  }
  return { rec, net };
}

/** The network record a claim made or found (it holds the bridge's gateways). */
function networkOf(db: Db, bridge: string): NetworkRecord {
  const net = db.networks[bridge];
  if (!net) throw new OcinetError('ESTATE', `network ${bridge} is not in ocinet's state after its container was recorded`);
  return net;
}
