/**
 * A container sandbox's network: setup and teardown, as the hook runs them.
 * Setup decides and records under the state lock (address, ports, bridge),
 * then does the kernel work unlocked in as few execs as possible; any failure
 * tears down what was recorded. Teardown is keyed by container id and is
 * idempotent: it removes what exists and forgets the record last.
 */
import { gatewayOf, intToIp, parseSubnet } from './cidr.js';
import { OcinetError } from './errors.js';
import { run } from './exec.js';
import { allocate } from './ipam.js';
import { purge, restore } from './iptables.js';
import { withLock } from './lock.js';
import { installNetworkRules, removeNetworkRules } from './masquerade.js';
import { dnatChain, hostVethName } from './names.js';
import { containerNetns, ipBatch, ipBatchIn, netnsId, pidNetnsPath } from './netns.js';
import type { OpLog } from './log.js';
import { checkPortConflicts, publishScript, unpublishScript } from './portmap.js';
import { bridgeHasSubnetRoute, createdByOcinet, deleteLink, ensureBridge, linkExists } from './bridge.js';
import { ensureStateDir, loadDb, saveDb, type ContainerRecord, type Db, type PortMapping } from './store.js';
import { enableForwarding } from './sysctl.js';
import { addIface, addRoutes, releaseSandbox, targetKey, type IfaceInput, type RouteSpec, type Target } from './kata-network.js';
import { containerLines, hostLines } from './veth.js';

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
}

/** Host links no kata-network add-iface may take: ocinet's bridges and the hook's veth ends. */
export function reservedLink(stateDir: string): (name: string) => boolean {
  return (name) => /^ocv[0-9a-f]{10}$/.test(name) || name in loadDb(stateDir).networks;
}

function targetOf(r: ContainerRecord): Target | null {
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

/** Under the lock: make sure the bridge and its rules exist; returns the network record. */
async function ensureNetwork(db: Db, o: NetworkOptions, gateway: string): Promise<Db['networks'][string]> {
  const known = db.networks[o.bridge];
  if (known && known.subnet !== o.subnet) {
    throw new OcinetError('ECONFLICT', `bridge ${o.bridge} is in use by ocinet with subnet ${known.subnet}, not ${o.subnet}`);
  }
  if (known && linkExists(o.bridge) && bridgeHasSubnetRoute(o.bridge, o.subnet)) {
    enableForwarding(o.bridge);
    return known;
  }
  const created = await ensureBridge(o.bridge, o.subnet, gateway, o.mtu);
  try {
    enableForwarding(o.bridge);
    await installNetworkRules(o.bridge, o.subnet);
  } catch (e) {
    if (created) await deleteLink(o.bridge);
    throw e;
  }
  const net = {
    bridge: o.bridge,
    subnet: o.subnet,
    gateway,
    createdBridge: Boolean(known?.createdBridge) || created || (await createdByOcinet(o.bridge)),
    ...(known?.lastIp ? { lastIp: known.lastIp } : {}),
  };
  db.networks[o.bridge] = net;
  return net;
}

export async function setupContainer(req: SetupRequest, log?: OpLog): Promise<SetupResult> {
  const netns = containerNetns(req.pid);
  const sn = parseSubnet(req.subnet);
  const gateway = intToIp(gatewayOf(sn));
  ensureStateDir(req.stateDir);
  log?.step('check');

  const rec = await withLock(req.stateDir, async () => {
    const db = loadDb(req.stateDir);
    if (db.containers[req.id]) {
      throw new OcinetError('ECONFLICT', `container ${req.id} already has a network from ocinet (run teardown first)`);
    }
    const owner = Object.values(db.containers).find((c) => c.netns === netns && c.mode === 'veth');
    if (owner) {
      // Namespace sharing: the namespace already has our eth0; record, change nothing.
      // Requests of the joiner's own cannot be honoured: say so rather than drop them.
      if (req.requested?.ports) {
        throw new OcinetError('ECONFLICT', `container ${req.id} joins the network namespace of ${owner.id}: publish its ports on ${owner.id}`);
      }
      if (req.interfaces?.length || req.routes?.length) {
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
    checkPortConflicts(req.ports, db, req.id);
    const net = await ensureNetwork(db, req, gateway);
    const ip = allocate(db, net, req.id, req.ip);
    const r: ContainerRecord = {
      id: req.id, mode: 'veth', bridge: req.bridge, ip, prefix: sn.prefix, iface: req.iface,
      hostVeth: hostVethName(req.id), mtu: req.mtu, ports: req.ports, pid: req.pid, netns,
      createdAt: new Date().toISOString(), setupPid: process.pid,
    };
    if (req.ports.length) {
      r.chain = dnatChain(req.id);
      r.tag = req.id;
    }
    db.containers[req.id] = r;
    saveDb(req.stateDir, db);
    return r;
  });
  log?.step('ipam');
  if (rec.mode === 'shared') return resultOf(rec, gateway);

  try {
    const links = ipBatch(hostLines({ hostVeth: rec.hostVeth!, iface: req.iface, mtu: req.mtu, pid: req.pid, bridge: req.bridge }))
      .then(() => log?.step('host'))
      .then(() => ipBatchIn(pidNetnsPath(req.pid), containerLines(req.iface, rec.ip!, sn.prefix, gateway)))
      .then(() => log?.step('container'));
    // Firewall rules do not depend on the links: apply them while the links are made.
    const fw = req.ports.length ? restore(publishScript(req.id, rec.ip!, req.subnet, req.ports)) : Promise.resolve(true);
    const done = await Promise.allSettled([links, fw]);
    for (const d of done) if (d.status === 'rejected') throw d.reason;
    const t = targetOf(rec);
    if (t) {
      for (const i of req.interfaces ?? []) await addIface(t, i, { stateDir: req.stateDir, reserved: reservedLink(req.stateDir) });
      if (req.routes?.length) await addRoutes(t, req.routes, req.stateDir);
      log?.step('extra');
    }
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
  ensureStateDir(o.stateDir);
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

  if (rec?.mode === 'veth') {
    const t = targetOf(rec);
    if (t) await releaseSandbox(o.stateDir, t); // interfaces and routes added through kata-network
    // Independent kernel objects: remove them side by side.
    const done = await Promise.allSettled([unpublish(rec), rec.hostVeth ? deleteLink(rec.hostVeth) : undefined]);
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
