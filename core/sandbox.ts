/**
 * A container sandbox's network: setup and teardown, as the hook runs them.
 * Setup opens the container's network namespace once, then decides and
 * records under the state lock (address, ports, bridge), reclaiming dead
 * records that stand in its way, then does the kernel work unlocked in as few
 * execs as possible; any failure tears down what was recorded. Teardown is
 * keyed by container id, acts only on a record its own container made, is
 * idempotent, and forgets the record last.
 */
import { existsSync } from 'node:fs';
import { bridgeHasSubnetRoute, createdByOcinet, deleteLink, ensureBridge, linkExists } from './bridge.js';
import { gatewayOf, intToIp, parseSubnet } from './cidr.js';
import { removeObjects, targetOf, vmNicOf } from './container-objects.js';
import { errorLine, isOcinetError, OcinetError } from './errors.js';
import { run } from './exec.js';
import { allocate } from './ipam.js';
import { restore } from './iptables.js';
import { ipvsRestore, type RestoreSet } from './ipvs.js';
import { addIface, addRoutes, type IfaceInput, type RouteSpec } from './kata-network.js';
import { withLock } from './lock.js';
import type { OpLog } from './log.js';
import { installNetworkRules, removeNetworkRules } from './masquerade.js';
import { containerMac, containerTag, dnatChain, guardChain, hostVethName, stateId, tapName, vmMac } from './names.js';
import { ipBatch, ipBatchIn, openContainerNetns, type NetnsHandle } from './netns.js';
import { checkVmSocket, DEFAULT_POLICY, isPlainId, socketProblem, VM_SOCKET_DIRS, type AnnotationPolicy } from './policy.js';
import { installGuard } from './portguard.js';
import { checkPortConflicts, publishScript } from './portmap.js';
import { socketOwner, startTime } from './proc.js';
import { forget, isAlive, Reclaimer } from './reclaim.js';
import { loadForChange } from './recover.js';
import { defaultRoute } from './route.js';
import { loadDb, recoveredRecord, saveDb, type ContainerRecord, type Db, type NetworkRecord, type PortMapping } from './store.js';
import { networkSysctls, portSysctls } from './sysctl.js';
import { containerLines, hostLines, reattachLines, type VethPlan } from './veth.js';
import { guestIpBatch, vmAddIface, type VmSockets } from './vm.js';

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
  /** The runtime's bundle path, recorded so that teardown acts only for this container. */
  bundle?: string;
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
  /** Which of `vm` an annotation named (held to the policy). */
  vmAnnotated?: { qmp: boolean; qga: boolean };
  /** IPVS rules to restore once the network is up (io.ocinet.ipvs). */
  ipvs?: RestoreSet;
  /** What annotations may ask for (the hook entry's); absent: the defaults. */
  policy?: AnnotationPolicy;
  /** --allow-spoofing: the port guard keeps only its router-advertisement drops. */
  allowSpoofing?: boolean;
}

/**
 * A VM sandbox's QEMU sockets. Named by the hook entry (--qmp/--qga, the
 * admin's): used as given. Named by an annotation: checked against the
 * policy before any connect. Not named: Kata's `/run/vc/vm/ID/`, then
 * `/run/ocinet/vm/ID/`, each holding qmp.sock and qga.sock.
 */
function vmSockets(req: SetupRequest): VmSockets {
  const policy = req.policy ?? DEFAULT_POLICY;
  for (const k of ['qmp', 'qga'] as const) {
    const p = req.vm?.[k];
    if (p && req.vmAnnotated?.[k]) checkVmSocket(policy, p, req.id, `annotation io.ocinet.${k}`);
  }
  const given = req.vm;
  if (given?.qmp && given.qga) return { qmp: given.qmp, qga: given.qga };
  const tried: string[] = [];
  for (const dir of isPlainId(req.id) ? VM_SOCKET_DIRS : []) {
    const qmp = given?.qmp ?? `${dir}/${req.id}/qmp.sock`;
    const qga = given?.qga ?? `${dir}/${req.id}/qga.sock`;
    // A given one was checked above; a default one has no symlink below the directory.
    const ok = (p: string, g: string | undefined): boolean => (p === g ? existsSync(p) : socketProblem(dir, p) === null);
    if (ok(qmp, given?.qmp) && ok(qga, given?.qga)) return { qmp, qga };
    tried.push(`${qmp} + ${qga}`);
  }
  throw new OcinetError('ENOTFOUND', `no QEMU sockets for VM sandbox ${req.id} (tried ${tried.join(', ') || 'nothing: the id is not a plain name'}; name them with io.ocinet.qmp and io.ocinet.qga)`);
}

/** Host links no kata-network add-iface may take: ocinet's bridges and the hook's veth ends. */
export function reservedLink(stateDir: string): (name: string) => boolean {
  return (name) => /^oc[vt][0-9a-f]{10}$/.test(name) || name in loadDb(stateDir).networks;
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
 * rules exist, and record the network. A bridge deleted behind ocinet's back
 * is made again and the running containers' veths are attached to it again.
 * What this call made is undone if it fails.
 */
async function ensureNetwork(db: Db, net: NetworkRecord, o: NetworkOptions): Promise<void> {
  const known = db.networks[o.bridge] === net;
  if (known && linkExists(o.bridge) && bridgeHasSubnetRoute(o.bridge, o.subnet)) {
    networkSysctls(o.bridge, net.createdBridge);
    return;
  }
  const sid = stateId(o.stateDir);
  const created = await ensureBridge(sid, o.bridge, o.subnet, net.gateway, o.mtu);
  try {
    net.createdBridge = net.createdBridge || created || (await createdByOcinet(o.bridge, sid));
    networkSysctls(o.bridge, net.createdBridge);
    await installNetworkRules(sid, o.bridge, o.subnet);
  } catch (e) {
    // iptables-restore commits table by table: take back whatever got in.
    await removeNetworkRules(sid, o.bridge).catch(() => undefined);
    if (created) await deleteLink(o.bridge);
    throw e;
  }
  db.networks[o.bridge] = net;
  if (created && known) {
    const running = Object.values(db.containers).filter((c) => c.bridge === o.bridge && c.mode === 'veth' && c.hostVeth && linkExists(c.hostVeth));
    await ipBatch(running.flatMap((c) => reattachLines(c.hostVeth!, o.bridge)), true);
  }
}

/** Under the lock: conflicts, address, bridge and rules, and the record holding them. */
async function claim(db: Db, req: SetupRequest, prefix: number, gateway: string, kind: RecordKind, reclaim: Reclaimer): Promise<ContainerRecord> {
  const blocks = reclaim.blocks.bind(reclaim);
  checkPortConflicts(req.ports, db, req.id, blocks);
  const net = networkRecord(db, req, gateway);
  const ip = allocate(db, net, req.id, req.ip, blocks); // before the bridge: a refused address changes nothing
  await reclaim.finish(); // the dead records' rules go before this container's come
  await ensureNetwork(db, net, req);
  return recordLease(db, req, ip, prefix, kind);
}

/** The annotations' extra interfaces, routes and IPVS rules, once the main NIC is up (both modes). */
async function addExtras(rec: ContainerRecord, req: SetupRequest, nsPath?: string): Promise<void> {
  const t = targetOf(rec, nsPath);
  if (!t) return;
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
function assertNew(db: Db, id: string, reclaim: Reclaimer): void {
  const same = db.containers[id];
  if (same && reclaim.blocks(same, `container id ${id} set up again`)?.id === id) {
    throw new OcinetError('ECONFLICT', `container ${id} already has a network from ocinet (run teardown first)`);
  }
}

/**
 * The state lock around a setup's decisions, with a Reclaimer for the dead
 * records they meet. Reclaimed records leave the state even when the setup
 * is refused: they were dead either way.
 */
function decide<T>(req: SetupRequest, log: OpLog | undefined, fn: (db: Db, reclaim: Reclaimer) => Promise<T>): Promise<T> {
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

type RecordKind = Pick<ContainerRecord, 'mode' | 'hostVeth' | 'mac' | 'pid' | 'start' | 'netns' | 'vm'>;

/** Write the record that holds a new container's lease and ports (under the lock). */
function recordLease(db: Db, req: SetupRequest, ip: string, prefix: number, kind: RecordKind): ContainerRecord {
  const r: ContainerRecord = {
    id: req.id, bridge: req.bridge, ip, prefix, iface: req.iface, mtu: req.mtu, ports: req.ports,
    createdAt: new Date().toISOString(), setupPid: process.pid, ...kind,
  };
  if (req.bundle) r.bundle = req.bundle;
  if (kind.hostVeth) r.guard = guardChain(stateId(req.stateDir), kind.hostVeth);
  if (req.ports.length) {
    r.chain = dnatChain(req.id, stateId(req.stateDir));
    r.tag = containerTag(req.id, stateId(req.stateDir));
  }
  db.containers[req.id] = r;
  saveDb(req.stateDir, db);
  return r;
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

async function setupVeth(req: SetupRequest, ns: NetnsHandle, log?: OpLog): Promise<SetupResult> {
  const sn = parseSubnet(req.subnet);
  const gateway = intToIp(gatewayOf(sn));
  log?.step('check');

  const sid = stateId(req.stateDir);
  const plan: VethPlan = { hostVeth: hostVethName(req.id, sid), iface: req.iface, mac: containerMac(req.id, sid), mtu: req.mtu, netns: ns.path, bridge: req.bridge };
  // The veth pair does not depend on the address: when the bridge is already
  // there, make it while the lock is taken and the address chosen. A veth made
  // here is removed again if the locked phase refuses the container.
  const early = linkExists(req.bridge) ? makeVeth(plan) : Promise.resolve(false);
  const dropEarly = async (): Promise<void> => {
    if (await early) await deleteLink(plan.hostVeth);
  };
  const identity = { pid: req.pid, start: ns.start, netns: ns.id };

  let rec: ContainerRecord;
  try {
    rec = await decide(req, log, async (db, reclaim) => {
      // The lock may have taken a while: the container must still be the process we opened.
      if (!ns.sameProcess()) throw new OcinetError('ENOTFOUND', `process ${req.pid} exited while the hook waited for the state lock`);
      assertNew(db, req.id, reclaim);
      const owner = namespaceOwner(db, ns.id, req.id, reclaim);
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
    return resultOf(rec, gateway);
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
      .then(() => ipBatchIn(ns.path, containerLines(req.iface, ip, sn.prefix, gateway)))
      .then(() => log?.step('container'));
    // Firewall rules do not depend on the links: apply them while the links are made.
    const done = await Promise.allSettled([links, ...firewall(rec, req)]);
    for (const d of done) if (d.status === 'rejected') throw d.reason;
    await addExtras(rec, req, ns.path);
    log?.step('extra');
    // Stale UDP conntrack entries would keep sending a published port's traffic elsewhere.
    for (const p of req.ports.filter((p) => p.proto === 'udp')) {
      await run('conntrack', ['-D', '-p', 'udp', '--dport', String(p.hostPort)], { allowFail: true });
    }
    log?.step('ports');
  } catch (e) {
    await teardownContainer(req.id, req, { bundle: req.bundle }).catch(() => undefined);
    throw e;
  }
  return resultOf(rec, gateway);
}

/** A new container's own rules: its port guard, and its published ports. Neither needs its link to exist yet. */
function firewall(rec: ContainerRecord, req: SetupRequest): Promise<unknown>[] {
  const out: Promise<unknown>[] = [installGuard({ chain: rec.guard!, port: rec.hostVeth!, mac: rec.mac!, ip: rec.ip!, allowSpoofing: req.allowSpoofing === true })];
  if (req.ports.length) out.push(restore(publishScript({ chain: rec.chain!, tag: rec.tag! }, rec.ip!, req.subnet, req.ports)));
  return out;
}

/**
 * The QEMU behind a VM sandbox: the process listening on its QMP socket (in
 * this namespace), else the state's pid. Named by pid + start time.
 */
function qemuIdentity(vm: VmSockets, statePid: number): Pick<ContainerRecord, 'pid' | 'start'> {
  const pid = socketOwner(vm.qmp) ?? (statePid > 0 ? statePid : null);
  const start = pid ? startTime(pid) : null;
  return pid && start !== null ? { pid, start } : {};
}

/**
 * TAP mode: the same bridge, IPAM, NAT and published ports, but the NIC is a
 * TAP hot-plugged into the VM's QEMU over QMP and configured in the guest by
 * its agent (address, MTU, default route).
 */
async function setupVm(req: SetupRequest, log?: OpLog): Promise<SetupResult> {
  const vm = vmSockets(req);
  const sn = parseSubnet(req.subnet);
  const gateway = intToIp(gatewayOf(sn));
  const qemu = qemuIdentity(vm, req.pid);
  log?.step('check');
  const rec = await decide(req, log, async (db, reclaim) => {
    assertNew(db, req.id, reclaim);
    return claim(db, req, sn.prefix, gateway, { mode: 'tap', hostVeth: tapName(req.id, stateId(req.stateDir)), mac: vmMac(req.id), vm, ...qemu }, reclaim);
  });
  log?.step('ipam');
  try {
    const fw = Promise.all(firewall(rec, req));
    const nic = vmNicOf(rec);
    await vmAddIface(vm, { ...nic, IPAddresses: [{ address: rec.ip!, mask: String(sn.prefix) }] }, { bridge: req.bridge });
    log?.step('hotplug');
    await guestIpBatch(vm, [defaultRoute(gateway, req.iface)]);
    log?.step('guest');
    await fw;
    await addExtras(rec, req);
  } catch (e) {
    await teardownContainer(req.id, req, { bundle: req.bundle }).catch(() => undefined);
    throw e;
  }
  return resultOf(rec, gateway);
}

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
}

/** Why `rec` is not the record of the container asking, or null when it is. */
function notOwner(rec: ContainerRecord, who: Requester): string | null {
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
    // Dead records on the bridge do not keep it: they are reclaimed here.
    const left = Object.values(db.containers).some((c) => c.bridge === bridge && reclaim.blocks(c, `bridge ${bridge} kept for it after ${id} left`) !== null);
    await reclaim.finish();
    let removed = false;
    if (!left && !o.keepBridge) removed = await removeNetwork(db, bridge, o.stateDir);
    if (rec || removed || reclaim.done.length) saveDb(o.stateDir, db);
    return removed;
  });
  log?.step('release');
  if (extrasError) throw new OcinetError('EEXEC', extrasError);
  return { id, removed: Boolean(rec), bridgeRemoved };
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
  await removeNetworkRules(sid, bridge);
  if (ours) await deleteLink(bridge);
  delete db.networks[bridge];
  return true;
}
