/**
 * A container sandbox's network: setup and teardown, as the hook runs them.
 * Setup decides and records under the state lock (address, ports, bridge),
 * then does the kernel work unlocked in as few execs as possible; any failure
 * tears down what was recorded. Teardown is keyed by container id and is
 * idempotent: it removes what exists and forgets the record last.
 */
import { gatewayOf, intToIp, parseSubnet } from './cidr.js';
import { errorLine, isOcinetError, OcinetError } from './errors.js';
import { run } from './exec.js';
import { allocate } from './ipam.js';
import { purge, restore } from './iptables.js';
import { withLock } from './lock.js';
import { installNetworkRules, removeNetworkRules } from './masquerade.js';
import { dnatChain, hostVethName, tapName, vmMac } from './names.js';
import { containerNetns, ipBatch, ipBatchIn, netnsId, pidNetnsPath } from './netns.js';
import type { OpLog } from './log.js';
import { checkPortConflicts, publishScript, unpublishScript } from './portmap.js';
import { bridgeHasSubnetRoute, createdByOcinet, deleteLink, ensureBridge, linkExists } from './bridge.js';
import { loadDb, saveDb, type ContainerRecord, type Db, type NetworkRecord, type PortMapping } from './store.js';
import { enableForwarding } from './sysctl.js';
import { ipvsadm, ipvsRestore, parseParameters, type RestoreSet } from './ipvs.js';
import { addIface, addRoutes, loadRecord, releaseSandbox, targetKey, vmTarget, type AddedIface, type IfaceInput, type RouteSpec, type Target } from './kata-network.js';
import { guestIpBatch, vmDelIface, vmAddIface, type VmSockets } from './vm.js';
import { defaultRoute } from './route.js';
import { existsSync } from 'node:fs';
import { containerLines, hostLines, type VethPlan } from './veth.js';

export interface NetworkOptions {
  stateDir: string;
  bridge: string;
  subnet: string;
  /** Interface name inside the container. */
  iface: string;
  mtu: number;
  /** Keep the bridge and its NAT rules when the last container leaves. */
  keepBridge: boolean;
}

export interface SetupRequest extends NetworkOptions {
  id: string;
  pid: number;
  ports: PortMapping[];
  ip?: string;
  /**
   * What the container itself asked for (annotations), as opposed to the
   * admin defaults of the hook entry: a container joining another's
   * namespace inherits its network, so only its own requests conflict.
   */
  requested?: { ports: boolean; ip: boolean };
  /** Extra interfaces and routes (io.ocinet.interfaces / io.ocinet.routes), added after eth0. */
  interfaces?: IfaceInput[];
  routes?: RouteSpec[];
  /** veth (default): a container's namespace; tap: a QEMU VM reached through QMP and its guest agent. */
  mode?: 'veth' | 'tap';
  vm?: { qmp?: string; qga?: string };
  /** IPVS rules to restore once the network is up (io.ocinet.ipvs). */
  ipvs?: RestoreSet;
}

/**
 * Where Kata keeps a sandbox's QEMU sockets, tried in order when the hook is
 * not told: /run/vc/vm/ID/ (Kata 2.x's VM directory), then ocinet's own
 * /run/ocinet/vm/ID/; each must hold qmp.sock and qga.sock.
 */
export const VM_SOCKET_DIRS = ['/run/vc/vm', '/run/ocinet/vm'];

function vmSockets(id: string, given: { qmp?: string; qga?: string } | undefined): VmSockets {
  if (given?.qmp && given.qga) return { qmp: given.qmp, qga: given.qga };
  const tried: string[] = [];
  for (const dir of VM_SOCKET_DIRS) {
    const qmp = given?.qmp ?? `${dir}/${id}/qmp.sock`;
    const qga = given?.qga ?? `${dir}/${id}/qga.sock`;
    if (existsSync(qmp) && existsSync(qga)) return { qmp, qga };
    tried.push(`${qmp} + ${qga}`);
  }
  throw new OcinetError('ENOTFOUND', `no QEMU sockets for VM sandbox ${id} (tried ${tried.join(', ')}; name them with io.ocinet.qmp and io.ocinet.qga)`);
}

/** Host links no kata-network add-iface may take: ocinet's bridges and the hook's veth ends. */
export function reservedLink(stateDir: string): (name: string) => boolean {
  return (name) => /^ocv[0-9a-f]{10}$/.test(name) || name in loadDb(stateDir).networks;
}

function targetOf(r: ContainerRecord): Target | null {
  if (r.mode === 'tap') return r.vm ? vmTarget(r.vm, r.id) : null;
  if (!r.netns || !r.pid) return null;
  return { key: targetKey(r.netns), nsPath: pidNetnsPath(r.pid), nsId: r.netns, containerId: r.id, pid: r.pid };
}

export interface SetupResult {
  id: string;
  ip: string;
  prefix: number;
  gateway: string;
  iface: string;
  hostVeth?: string;
  ports: PortMapping[];
  /** Set when the container joined a namespace another container owns. */
  sharedWith?: string;
}

function resultOf(r: ContainerRecord, gateway: string): SetupResult {
  const out: SetupResult = { id: r.id, ip: r.ip ?? '', prefix: r.prefix ?? 0, gateway, iface: r.iface ?? '', ports: r.ports };
  if (r.hostVeth) out.hostVeth = r.hostVeth;
  if (r.sharedWith) out.sharedWith = r.sharedWith;
  return out;
}

/** Under the lock: the network's record, known or new (nothing touched yet). */
function networkRecord(db: Db, o: NetworkOptions, gateway: string): NetworkRecord {
  const known = db.networks[o.bridge];
  if (known && known.subnet !== o.subnet) {
    throw new OcinetError('ECONFLICT', `bridge ${o.bridge} is in use by ocinet with subnet ${known.subnet}, not ${o.subnet}`);
  }
  return known ?? { bridge: o.bridge, subnet: o.subnet, gateway, createdBridge: false };
}

/**
 * Under the lock, once the address is chosen: make sure the bridge and its
 * rules exist, and record the network. What this call made is undone if it fails.
 */
async function ensureNetwork(db: Db, net: NetworkRecord, o: NetworkOptions): Promise<void> {
  const known = db.networks[o.bridge] === net;
  if (known && linkExists(o.bridge) && bridgeHasSubnetRoute(o.bridge, o.subnet)) {
    enableForwarding(o.bridge);
    return;
  }
  const created = await ensureBridge(o.bridge, o.subnet, net.gateway, o.mtu);
  try {
    enableForwarding(o.bridge);
    await installNetworkRules(o.bridge, o.subnet);
  } catch (e) {
    // iptables-restore commits table by table: take back whatever got in.
    const others = Object.keys(db.networks).some((b) => b !== o.bridge);
    await removeNetworkRules(o.bridge, !others).catch(() => undefined);
    if (created) await deleteLink(o.bridge);
    throw e;
  }
  net.createdBridge = net.createdBridge || created || (await createdByOcinet(o.bridge));
  db.networks[o.bridge] = net;
}

/** Under the lock: conflicts, address, bridge and rules, and the record holding them. */
async function claim(
  db: Db, req: SetupRequest, prefix: number, gateway: string, kind: Pick<ContainerRecord, 'mode' | 'hostVeth' | 'pid' | 'netns' | 'vm'>,
): Promise<ContainerRecord> {
  checkPortConflicts(req.ports, db, req.id);
  const net = networkRecord(db, req, gateway);
  const ip = allocate(db, net, req.id, req.ip); // before the bridge: a refused address changes nothing
  await ensureNetwork(db, net, req);
  return recordLease(db, req, ip, prefix, kind);
}

/** The annotations' extra interfaces, routes and IPVS rules, once the main NIC is up (both modes). */
async function addExtras(rec: ContainerRecord, req: SetupRequest): Promise<void> {
  const t = targetOf(rec);
  if (!t) return;
  for (const i of req.interfaces ?? []) await addIface(t, i, { stateDir: req.stateDir, reserved: reservedLink(req.stateDir) });
  if (req.routes?.length) await addRoutes(t, req.routes, req.stateDir);
  if (req.ipvs) {
    await ipvsRestore(t, req.ipvs, req.stateDir).catch((e: unknown) => {
      throw new OcinetError(isOcinetError(e) ? e.code : 'EEXEC', `annotation io.ocinet.ipvs: ${errorLine(e)}`);
    });
  }
}

function assertNew(db: Db, id: string): void {
  if (db.containers[id]) throw new OcinetError('ECONFLICT', `container ${id} already has a network from ocinet (run teardown first)`);
}

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

/** Write the record that holds a new container's lease and ports (under the lock). */
function recordLease(
  db: Db, req: SetupRequest, ip: string, prefix: number, kind: Pick<ContainerRecord, 'mode' | 'hostVeth' | 'pid' | 'netns' | 'vm'>,
): ContainerRecord {
  const r: ContainerRecord = {
    id: req.id, bridge: req.bridge, ip, prefix, iface: req.iface, mtu: req.mtu, ports: req.ports,
    createdAt: new Date().toISOString(), setupPid: process.pid, ...kind,
  };
  if (req.ports.length) {
    r.chain = dnatChain(req.id);
    r.tag = req.id;
  }
  db.containers[req.id] = r;
  saveDb(req.stateDir, db);
  return r;
}

export async function setupContainer(req: SetupRequest, log?: OpLog): Promise<SetupResult> {
  if (req.mode === 'tap') return setupVm(req, log);
  const netns = containerNetns(req.pid);
  const sn = parseSubnet(req.subnet);
  const gateway = intToIp(gatewayOf(sn));
  log?.step('check');

  const plan = { hostVeth: hostVethName(req.id), iface: req.iface, mtu: req.mtu, pid: req.pid, bridge: req.bridge };
  // The veth pair does not depend on the address: when the bridge is already
  // there, make it while the lock is taken and the address chosen. A veth made
  // here is removed again if the locked phase refuses the container.
  const early = linkExists(req.bridge) ? makeVeth(plan) : Promise.resolve(false);
  const dropEarly = async (): Promise<void> => {
    if (await early) await deleteLink(plan.hostVeth);
  };

  let rec: ContainerRecord;
  try {
    rec = await withLock(req.stateDir, async () => {
      const db = loadDb(req.stateDir);
      assertNew(db, req.id);
      const owner = Object.values(db.containers).find((c) => c.netns === netns && c.mode === 'veth');
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
          ports: [], pid: req.pid, netns, sharedWith: owner.id, createdAt: new Date().toISOString(), setupPid: process.pid,
        };
        db.containers[req.id] = shared;
        saveDb(req.stateDir, db);
        return shared;
      }
      return claim(db, req, sn.prefix, gateway, { mode: 'veth', hostVeth: plan.hostVeth, pid: req.pid, netns });
    });
  } catch (e) {
    await dropEarly();
    throw e;
  }
  log?.step('ipam');
  if (rec.mode === 'shared') {
    await dropEarly();
    return resultOf(rec, gateway);
  }
  const ip = rec.ip!;

  try {
    // The early attempt failed or did not run (no bridge yet, or it went meanwhile): now it is there.
    const links = early
      .then(async (made) => {
        if (!made) await ipBatch(hostLines(plan));
      })
      .then(() => log?.step('host'))
      .then(() => ipBatchIn(pidNetnsPath(req.pid), containerLines(req.iface, ip, sn.prefix, gateway)))
      .then(() => log?.step('container'));
    // Firewall rules do not depend on the links: apply them while the links are made.
    const fw = req.ports.length ? restore(publishScript(req.id, rec.ip!, req.subnet, req.ports)) : Promise.resolve(true);
    const done = await Promise.allSettled([links, fw]);
    for (const d of done) if (d.status === 'rejected') throw d.reason;
    await addExtras(rec, req);
    log?.step('extra');
    // Stale UDP conntrack entries would keep sending a published port's traffic elsewhere.
    for (const p of req.ports.filter((p) => p.proto === 'udp')) {
      await run('conntrack', ['-D', '-p', 'udp', '--dport', String(p.hostPort)], { allowFail: true });
    }
    log?.step('ports');
  } catch (e) {
    await teardownContainer(req.id, req).catch(() => undefined);
    throw e;
  }
  return resultOf(rec, gateway);
}

/**
 * TAP mode: the same bridge, IPAM, NAT and published ports, but the NIC is a
 * TAP hot-plugged into the VM's QEMU over QMP and configured in the guest by
 * its agent (address, MTU, default route).
 */
async function setupVm(req: SetupRequest, log?: OpLog): Promise<SetupResult> {
  const vm = vmSockets(req.id, req.vm);
  const sn = parseSubnet(req.subnet);
  const gateway = intToIp(gatewayOf(sn));
  log?.step('check');
  const rec = await withLock(req.stateDir, async () => {
    const db = loadDb(req.stateDir);
    assertNew(db, req.id);
    return claim(db, req, sn.prefix, gateway, { mode: 'tap', hostVeth: tapName(req.id), vm, ...(req.pid ? { pid: req.pid } : {}) });
  });
  log?.step('ipam');
  try {
    const fw = req.ports.length ? restore(publishScript(req.id, rec.ip!, req.subnet, req.ports)) : Promise.resolve(true);
    const nic = vmNicOf(rec);
    await vmAddIface(vm, { ...nic, IPAddresses: [{ address: rec.ip!, mask: String(sn.prefix) }] }, { bridge: req.bridge });
    log?.step('hotplug');
    await guestIpBatch(vm, [defaultRoute(gateway, req.iface)]);
    log?.step('guest');
    await fw;
    await addExtras(rec, req);
  } catch (e) {
    await teardownContainer(req.id, req).catch(() => undefined);
    throw e;
  }
  return resultOf(rec, gateway);
}

/**
 * A TAP-mode sandbox's NIC, from its record: QEMU's ids follow from the name,
 * the TAP's name (oct + hash of the id) is ocinet's, so it is ours to delete.
 */
function vmNicOf(r: ContainerRecord): AddedIface & { createdTap: boolean } {
  return { device: r.hostVeth!, name: r.iface!, hwAddr: vmMac(r.id), mtu: r.mtu!, kind: 'tap', queues: 0, linkType: 'tap', createdTap: true };
}

/** Unplug a VM sandbox's NIC (when QEMU is still there) and remove its TAP. */
async function unplugVm(rec: ContainerRecord): Promise<void> {
  try {
    if (rec.vm) await vmDelIface(rec.vm, vmNicOf(rec));
  } finally {
    // Even when the guest does not let go, the host side goes.
    if (rec.hostVeth) await deleteLink(rec.hostVeth);
  }
}

export interface TeardownResult {
  id: string;
  removed: boolean;
  bridgeRemoved: boolean;
}

const tagPattern = (tag: string): RegExp => new RegExp(`ocinet:${tag.replace(/[.+]/g, '\\$&')}(?=["\\s]|$)`);

/** Remove a container's ports chain: exactly when we can, by listing when parts are missing. */
async function unpublish(r: ContainerRecord): Promise<void> {
  if (!r.chain || !r.tag) return;
  if (await restore(unpublishScript(r.tag), true)) return;
  const pat = tagPattern(r.tag);
  const chain = r.chain;
  await purge(['nat'], (l) => pat.test(l), (c) => c === chain);
}

export async function teardownContainer(id: string, o: Omit<NetworkOptions, 'iface' | 'mtu' | 'subnet'>, log?: OpLog): Promise<TeardownResult> {
  const { rec, heir } = await withLock(o.stateDir, () => {
    const db = loadDb(o.stateDir);
    const rec = db.containers[id];
    // A sharer that is still alive inherits the namespace's network instead of losing it.
    const heir = rec?.mode === 'veth'
      ? Object.values(db.containers).find((c) => c.sharedWith === id && c.pid && netnsId(pidNetnsPath(c.pid)) === rec.netns)
      : undefined;
    if (rec && heir) {
      db.containers[heir.id] = { ...rec, id: heir.id, pid: heir.pid!, createdAt: heir.createdAt, setupPid: heir.setupPid };
      for (const c of Object.values(db.containers)) if (c.sharedWith === id) c.sharedWith = heir.id;
      delete db.containers[id];
      saveDb(o.stateDir, db);
    }
    return { rec, heir };
  });
  log?.step('lookup');
  if (heir) return { id, removed: true, bridgeRemoved: false };
  let extrasError: unknown;

  if (rec?.mode === 'veth' || rec?.mode === 'tap') {
    const t = targetOf(rec);
    if (t) {
      // A VM outlives its network: take back the IPVS rules given to it.
      if (t.vm && loadRecord(o.stateDir, t).ipvsRules) await ipvsadm(t, parseParameters('--clear'), o.stateDir).catch(() => undefined);
      // Interfaces added through kata-network. One that will not go must not keep
      // the container's own network and lease: report it after the rest is done.
      await releaseSandbox(o.stateDir, t).catch((e: unknown) => {
        extrasError = e;
      });
    }
    // Independent kernel objects: remove them side by side.
    const link = rec.mode === 'tap' ? unplugVm(rec) : rec.hostVeth ? deleteLink(rec.hostVeth) : undefined;
    const done = await Promise.allSettled([unpublish(rec), link]);
    for (const d of done) if (d.status === 'rejected') throw d.reason;
    log?.step('kernel');
  } else if (!rec) {
    await deleteLink(hostVethName(id)); // a setup killed before it could record anything more
  }
  const bridge = rec?.bridge ?? o.bridge;
  const bridgeRemoved = await withLock(o.stateDir, async () => {
    const db = loadDb(o.stateDir);
    if (rec) delete db.containers[id];
    const left = Object.values(db.containers).some((c) => c.bridge === bridge);
    let removed = false;
    if (!left && !o.keepBridge) {
      removed = await removeNetwork(db, bridge);
    }
    if (rec || removed) saveDb(o.stateDir, db);
    return removed;
  });
  log?.step('release');
  if (extrasError) throw extrasError;
  return { id, removed: Boolean(rec), bridgeRemoved };
}

/**
 * Remove a network nobody uses: its rules, and its bridge if ocinet made it
 * (known from the state, or from the bridge's alias after a crash). Caller holds the lock.
 */
export async function removeNetwork(db: Db, bridge: string): Promise<boolean> {
  const net = db.networks[bridge];
  const ours = net?.createdBridge || (linkExists(bridge) && (await createdByOcinet(bridge)));
  if (!net && !ours) return false;
  const last = Object.keys(db.networks).filter((b) => b !== bridge).length === 0;
  await removeNetworkRules(bridge, last);
  if (ours) await deleteLink(bridge);
  delete db.networks[bridge];
  return true;
}
