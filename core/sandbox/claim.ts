/**
 * The locked phase of a setup, shared by container and VM sandboxes: the
 * state lock around the decisions (conflicts, address, bridge and rules),
 * the record that holds them, and the container's own rules and extras once
 * its NIC exists.
 */
import { bridgeHasSubnetRoute, createdByOcinet, deleteLink, ensureBridge, linkExists } from '../net/bridge.js';
import { targetOf } from './objects.js';
import { sharingAgent } from '../kata/records.js';
import { errorLine, isOcinetError, OcinetError } from '../base/errors.js';
import { allocate, allocate6 } from '../state/ipam.js';
import { bigToIp6, gateway6Of, parseSubnet6 } from '../base/cidr6.js';
import { ipvsRestore } from '../kata/ipvs.js';
import { addIface, addRoutes } from '../kata/network.js';
import { withLock } from '../state/lock.js';
import type { OpLog } from '../state/log.js';
import { firewallOf, resolveBackend } from '../firewall/backends.js';
import { guardChain, portsChainOf, stateId } from '../state/names.js';
import { ipBatch } from '../net/netns.js';
import { DEFAULT_POLICY } from '../input/policy.js';
import { checkPortConflicts, flushStaleUdp } from '../firewall/ports.js';
import { Reclaimer } from './reclaim.js';
import { loadForChange } from './recover.js';
import { loadDb, saveDb, type Backend, type ContainerRecord, type Db, type NetworkRecord, type PortMapping } from '../state/store.js';
import { networkSysctls } from '../net/sysctl.js';
import { reattachVeths } from '../net/veth.js';
import type { NetworkOptions, SetupRequest } from '../input/request.js';

/** Host links no kata-network add-iface may take: ocinet's bridges and the hook's veth ends. */
export function reservedLink(stateDir: string): (name: string) => boolean {
  return (name) => /^oc[vt][0-9a-f]{10}$/.test(name) || name in loadDb(stateDir).networks;
}

export interface SetupResult {
  id: string;
  ip: string;
  prefix: number;
  gateway: string;
  /** Dual stack: the container's IPv6 address and the bridge's. */
  ip6?: string;
  gateway6?: string;
  iface: string;
  hostVeth?: string;
  /** The container's MAC on the bridge. */
  mac?: string;
  ports: PortMapping[];
  /** Set when the container joined a namespace another container owns. */
  sharedWith?: string;
}

export function resultOf(r: ContainerRecord, gateway: string, gateway6?: string): SetupResult {
  const out: SetupResult = { id: r.id, ip: r.ip ?? '', prefix: r.prefix ?? 0, gateway, iface: r.iface ?? '', ports: r.ports };
  if (r.ip6 && gateway6) Object.assign(out, { ip6: r.ip6, gateway6 });
  if (r.hostVeth) out.hostVeth = r.hostVeth;
  if (r.mac) out.mac = r.mac;
  if (r.sharedWith) out.sharedWith = r.sharedWith;
  return out;
}

/**
 * Under the lock: the network's record, known or new (nothing touched yet).
 * A known network keeps its firewall backend; asking for another one is
 * refused while a live container uses it, and switches it when none does.
 */
async function networkRecord(db: Db, o: NetworkOptions, gateway: string, reclaim: Reclaimer): Promise<NetworkRecord> {
  const known = db.networks[o.bridge];
  if (known && known.subnet !== o.subnet) {
    throw new OcinetError('ECONFLICT', `bridge ${o.bridge} is in use by ocinet with subnet ${known.subnet}, not ${o.subnet}`);
  }
  if (known && (known.subnet6 ?? '') !== (o.subnet6 ?? '')) {
    throw new OcinetError('ECONFLICT', `bridge ${o.bridge} is in use by ocinet with ${known.subnet6 ? `IPv6 subnet ${known.subnet6}` : 'no IPv6 subnet'}, not ${o.subnet6 ?? 'none'}`);
  }
  if (!known) {
    const net: NetworkRecord = { bridge: o.bridge, subnet: o.subnet, gateway, createdBridge: false, firewall: await resolveBackend(o.firewall ?? 'auto') };
    if (o.subnet6) {
      if (net.firewall === 'iptables') throw new OcinetError('EINPUT', `--subnet6 needs the nftables firewall backend, and network ${o.bridge} would get iptables (an iptables FORWARD policy of DROP makes auto pick it)`);
      Object.assign(net, { subnet6: o.subnet6, gateway6: bigToIp6(gateway6Of(parseSubnet6(o.subnet6))) });
    }
    return net;
  }
  const has = known.firewall ?? 'iptables';
  if (o.subnet6 && o.firewall === 'iptables') throw new OcinetError('EINPUT', '--subnet6 needs the nftables firewall backend');
  if (o.firewall === undefined || o.firewall === 'auto' || o.firewall === has) return known;
  const user = Object.values(db.containers).find((c) => c.bridge === o.bridge && reclaim.blocks(c, `network ${o.bridge} asked for firewall ${o.firewall}`));
  if (user) {
    throw new OcinetError('ECONFLICT', `network ${o.bridge} uses firewall backend ${has} (container ${user.id} is on it), not ${o.firewall}: tear its containers down first`);
  }
  await firewallOf(has).removeNetwork({ sid: stateId(o.stateDir), bridge: o.bridge, subnet: o.subnet }, othersOn(db, o.bridge, has));
  delete db.networks[o.bridge];
  return { ...known, firewall: o.firewall };
}

/** How many other networks of this state dir use backend `b`. */
export function othersOn(db: Db, bridge: string, b: Backend): number {
  return Object.values(db.networks).filter((n) => n.bridge !== bridge && (n.firewall ?? 'iptables') === b).length;
}

/**
 * Under the lock, once the address is chosen: make sure the bridge and its
 * rules exist, and record the network. A bridge deleted behind ocinet's back
 * is made again and the running containers' veths are attached to it again.
 * What this call made is undone if it fails.
 */
async function ensureNetwork(db: Db, net: NetworkRecord, o: NetworkOptions): Promise<void> {
  const known = db.networks[o.bridge] === net;
  if (known && linkExists(o.bridge) && bridgeHasSubnetRoute(o.bridge, o.subnet)) {
    networkSysctls(o.bridge, net.createdBridge, net.subnet6 !== undefined);
    return;
  }
  const sid = stateId(o.stateDir);
  const created = await ensureBridge(sid, o.bridge, o.subnet, net.gateway, o.mtu);
  const fw = firewallOf(net.firewall);
  const rules = { sid, bridge: o.bridge, subnet: o.subnet, ...(net.subnet6 ? { subnet6: net.subnet6 } : {}) };
  const others = othersOn(db, o.bridge, fw.backend);
  try {
    net.createdBridge = net.createdBridge || created || (await createdByOcinet(o.bridge, sid));
    networkSysctls(o.bridge, net.createdBridge, net.subnet6 !== undefined);
    if (net.subnet6) await ipBatch([`addr replace ${net.gateway6}/${parseSubnet6(net.subnet6).prefix} dev ${o.bridge} nodad`]);
    await fw.installNetwork(rules, others);
  } catch (e) {
    // iptables-restore commits table by table: take back whatever got in.
    await fw.removeNetwork(rules, others).catch(() => undefined);
    if (created) await deleteLink(o.bridge);
    throw e;
  }
  db.networks[o.bridge] = net;
  if (created && known) {
    const running = Object.values(db.containers).filter((c) => c.bridge === o.bridge && c.mode === 'veth' && c.hostVeth && linkExists(c.hostVeth));
    reattachVeths(running.map((c) => c.hostVeth!), o.bridge);
  }
}

/** Under the lock: conflicts, address, bridge and rules, and the record holding them. */
export async function claim(db: Db, req: SetupRequest, prefix: number, gateway: string, kind: RecordKind, reclaim: Reclaimer): Promise<ContainerRecord> {
  const blocks = reclaim.blocks.bind(reclaim);
  checkPortConflicts(req.ports, db, req.id, blocks);
  const net = await networkRecord(db, req, gateway, reclaim);
  const ip = allocate(db, net, req.id, req.ip, blocks); // before the bridge: a refused address changes nothing
  const ip6 = net.subnet6 ? allocate6(db, net, req.id, req.ip6, blocks) : undefined;
  await reclaim.finish(); // the dead records' rules go before this container's come
  await ensureNetwork(db, net, req);
  return recordLease(db, req, ip, prefix, { ...kind, firewall: net.firewall ?? 'iptables', ...(ip6 ? { ip6 } : {}) });
}

/** The annotations' extra interfaces, routes and IPVS rules, once the main NIC is up (both modes). */
export async function addExtras(rec: ContainerRecord, req: SetupRequest, nsPath?: string): Promise<void> {
  const found = targetOf(rec, nsPath);
  if (!found) return;
  const t = sharingAgent(found, req.stateDir);
  // Annotations' interfaces: the policy decides which host devices they may take or make.
  const policy = req.policy ?? DEFAULT_POLICY;
  for (const i of req.interfaces ?? []) await addIface(t, i, { stateDir: req.stateDir, reserved: reservedLink(req.stateDir), policy });
  if (req.routes?.length) await addRoutes(t, req.routes, req.stateDir);
  if (req.ipvs) {
    await ipvsRestore(t, req.ipvs, req.stateDir).catch((e: unknown) => {
      throw new OcinetError(isOcinetError(e) ? e.code : 'EEXEC', `annotation io.ocinet.ipvs: ${errorLine(e)}`);
    });
  }
}

/** The same id set up again: refused while its record is alive, reclaimed when it is dead. */
export function assertNew(db: Db, id: string, reclaim: Reclaimer): void {
  const same = db.containers[id];
  if (same && reclaim.blocks(same, `container id ${id} set up again`)?.id === id) {
    throw new OcinetError('ECONFLICT', `container ${id} already has a network from ocinet (tear it down first)`);
  }
}

/**
 * The state lock around a setup's decisions, with a Reclaimer for the dead
 * records they meet. Reclaimed records leave the state even when the setup
 * is refused: they were dead either way.
 */
export function decide<T>(req: SetupRequest, log: OpLog | undefined, fn: (db: Db, reclaim: Reclaimer) => Promise<T>): Promise<T> {
  return withLock(req.stateDir, async () => {
    const db = await loadForChange(req.stateDir, log);
    const reclaim = new Reclaimer(db, req.stateDir, req.id, log);
    try {
      return await fn(db, reclaim);
    } finally {
      // fn saves what it decided; the reclaims are saved also when it refused.
      await reclaim.finish();
      if (reclaim.done.length) saveDb(req.stateDir, db);
    }
  });
}

export type RecordKind = Pick<ContainerRecord, 'mode' | 'hostVeth' | 'mac' | 'pid' | 'start' | 'netns' | 'nsPath' | 'vm' | 'firewall' | 'ip6'>;

/** Write the record that holds a new container's lease and ports (under the lock). */
function recordLease(db: Db, req: SetupRequest, ip: string, prefix: number, kind: RecordKind): ContainerRecord {
  const r: ContainerRecord = {
    id: req.id, bridge: req.bridge, ip, prefix, iface: req.iface, mtu: req.mtu, ports: req.ports,
    createdAt: new Date().toISOString(), setupPid: process.pid, ...kind,
  };
  if (req.bundle) r.bundle = req.bundle;
  if (req.cni) r.cni = req.cni;
  if (req.allowSpoofing) r.allowSpoofing = true;
  // The iptables backend finds a container's rules by the names its record holds; nftables by its elements.
  if (kind.firewall === 'nftables') return save(db, req, r);
  if (kind.hostVeth) r.guard = guardChain(stateId(req.stateDir), kind.hostVeth);
  if (req.ports.length) Object.assign(r, portsChainOf(req.id, stateId(req.stateDir)));
  return save(db, req, r);
}

function save(db: Db, req: SetupRequest, r: ContainerRecord): ContainerRecord {
  db.containers[req.id] = r;
  saveDb(req.stateDir, db);
  return r;
}

/**
 * A new container's own rules: its port guard and its published ports, then
 * its UDP ports' stale conntrack entries. They do not need its link to exist yet.
 */
export async function firewall(rec: ContainerRecord, req: SetupRequest): Promise<void> {
  await firewallOf(rec.firewall).addContainer(stateId(req.stateDir), rec, req.subnet, req.allowSpoofing === true);
  await flushStaleUdp(rec.ports);
}
