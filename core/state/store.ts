/**
 * ocinet's state: one JSON file per state directory, replaced atomically
 * (write + rename) and only changed under the state lock. Leases are the
 * `ip` of container records, so an address and its owner can never disagree.
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { OcinetError } from '../base/errors.js';
import { isIPv4 } from '../base/cidr.js';
import { isIPv6Address } from '../base/cidr6.js';
import { containerTag, dnatChain, GUARD_CHAIN_PREFIX, guardChain, hostVethName, isCniContainerId, isIfName, stateId } from './names.js';
import { useStateDir } from './statedir.js';

export type Proto = 'tcp' | 'udp';

/** The firewall backends (firewall/): a network records the one it was made with. */
export const BACKENDS = ['iptables', 'nftables'] as const;
export type Backend = (typeof BACKENDS)[number];

export interface PortMapping {
  hostPort: number;
  containerPort: number;
  proto: Proto;
  /** Only this host address (IPv4) answers; absent: every local address. */
  hostIp?: string;
}

/** A CNI attachment's network; the runtime's container id and interface are its record's id, `containerId/ifname`. */
export interface CniAttachment {
  network: string;
}

/** The record id of a CNI attachment: not a valid OCI id, so it never meets a hook's. */
export const cniRecordId = (containerId: string, ifname: string): string => `${containerId}/${ifname}`;

export interface NetworkRecord {
  bridge: string;
  subnet: string;
  gateway: string;
  /** True when ocinet created the bridge, so it may delete it. */
  createdBridge: boolean;
  /** Last address handed out; allocation continues after it (host-local style). */
  lastIp?: string;
  /** Dual stack: the network's IPv6 subnet, the bridge's address in it, the last address handed out. */
  subnet6?: string;
  gateway6?: string;
  lastIp6?: string;
  /** The firewall backend the network was made with (absent: iptables, made before backends existed). */
  firewall?: Backend;
}

export interface ContainerRecord {
  id: string;
  /** veth: ocinet made eth0; shared: joined a netns another record owns; tap: a VM's hot-plugged NIC. */
  mode: 'veth' | 'shared' | 'tap';
  /** tap mode: the VM's QEMU sockets. */
  vm?: { qmp: string; qga: string };
  bridge: string;
  ip?: string;
  prefix?: number;
  iface?: string;
  hostVeth?: string;
  /** Dual stack: the container's IPv6 address (prefix: its network's subnet6). */
  ip6?: string;
  /** The container's MAC on the bridge (its eth0, or its VM's NIC), which its port guard allows. */
  mac?: string;
  /** The port guard's ebtables chain (firewall/iptables/guard.ts): iptables records only. */
  guard?: string;
  /** Its network's firewall backend when it was set up (absent: iptables). */
  firewall?: Backend;
  /** Set up with --allow-spoofing: its port guard keeps only the router-advertisement drops. */
  allowSpoofing?: boolean;
  /** Per-container DNAT chain and the id its rules are tagged with (kept when a sharer takes over). */
  chain?: string;
  tag?: string;
  mtu?: number;
  ports: PortMapping[];
  pid?: number;
  /**
   * Start time of `pid` (/proc/PID/stat field 22). With pid and netns it names
   * the process; the kernel reuses each alone. Absent in older records: then
   * pid and netns decide.
   */
  start?: number;
  /** `dev:inode` of the network namespace, to spot sharing and dead sandboxes. */
  netns?: string;
  /**
   * The runtime's file naming the namespace (a CNI runtime's bind mount), when
   * no process does: alive while that file is still this namespace.
   */
  nsPath?: string;
  /** A CNI attachment (ocinet-cni): its network's name. */
  cni?: CniAttachment;
  /** The runtime's bundle path: a teardown naming another bundle is another container's. */
  bundle?: string;
  /** Rebuilt from kernel objects after the state file was lost; the id may be a stand-in. */
  recovered?: boolean;
  /** Why the record was found damaged; it is kept by its id's names for teardown and gc. */
  damaged?: string;
  sharedWith?: string;
  createdAt: string;
  /** Pid of the hook that wrote the record (a dead one with no network means a crashed setup). */
  setupPid: number;
}

export interface Db {
  version: 1;
  networks: Record<string, NetworkRecord>;
  containers: Record<string, ContainerRecord>;
}

export const DEFAULT_STATE_DIR = '/run/ocinet';

/** A record map with no prototype: ids such as `__proto__` or `constructor` are plain keys. */
export function dict<T>(): Record<string, T> {
  return Object.create(null) as Record<string, T>;
}

export function emptyDb(): Db {
  return { version: 1, networks: dict(), containers: dict() };
}

/** Refuse a state dir another user could change; create it 0700 when missing. */
export function ensureStateDir(dir: string): void {
  useStateDir(dir);
}

export function dbPath(dir: string): string {
  return join(dir, 'state.json');
}

/**
 * Read the state. A file that cannot be parsed at all is EDAMAGED (the hook
 * and gc then rebuild it from the kernel's objects, see recover.ts). A record
 * that is damaged is kept by what its id names (veth, ports chain), marked
 * `damaged`, so that teardown and gc still remove its objects; `warnings`
 * says which were repaired.
 */
export function loadDb(dir: string, warnings?: string[]): Db {
  let text: string;
  try {
    text = readFileSync(dbPath(dir), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return emptyDb();
    throw new OcinetError('ESTATE', `cannot read ${dbPath(dir)}: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new OcinetError('EDAMAGED', `state file ${dbPath(dir)} is damaged (${text.trim() === '' ? 'empty' : (e as Error).message})`);
  }
  const d = raw as { version?: unknown; networks?: unknown; containers?: unknown };
  if (!isObject(d) || d.version !== 1 || !isObject(d.networks) || !isObject(d.containers)) {
    throw new OcinetError('EDAMAGED', `state file ${dbPath(dir)} is damaged (not an ocinet state of version 1)`);
  }
  const db = emptyDb();
  for (const [bridge, n] of Object.entries(d.networks)) {
    const why = networkProblem(bridge, n);
    if (why) throw new OcinetError('EDAMAGED', `state file ${dbPath(dir)} is damaged (network '${bridge}': ${why})`);
    db.networks[bridge] = n as NetworkRecord;
  }
  for (const [id, c] of Object.entries(d.containers)) {
    const why = containerProblem(id, c);
    if (!why) {
      const r = c as ContainerRecord;
      db.containers[id] = Array.isArray(r.ports) ? r : { ...r, ports: [] }; // older records: no ports field
      continue;
    }
    const salvaged = salvage(id, c, why, stateId(dir));
    db.containers[id] = salvaged;
    warnings?.push(`state file ${dbPath(dir)}: record '${id}' is damaged (${why}); kept by its names for teardown and 'ocinet gc'`);
  }
  return db;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const isName = (v: unknown): v is string => typeof v === 'string' && isIfName(v);
const isAddress = (v: unknown): v is string => typeof v === 'string' && isIPv4(v);
const MAC = /^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$/;
const isGuard = (v: unknown): v is string => typeof v === 'string' && new RegExp(`^${GUARD_CHAIN_PREFIX}[0-9a-f]{8}-[0-9a-f]{9}$`).test(v);
const isPort = (p: unknown): boolean => Number.isInteger(p) && (p as number) >= 1 && (p as number) <= 65535;

function networkProblem(bridge: string, n: unknown): string | null {
  if (!isObject(n)) return 'not an object';
  if (n.bridge !== bridge || !isIfName(bridge)) return `field 'bridge' is not '${bridge}'`;
  if (typeof n.subnet !== 'string' || !/^[\d.]+\/\d{1,2}$/.test(n.subnet)) return `field 'subnet' is not a CIDR`;
  if (!isAddress(n.gateway)) return `field 'gateway' is not an IPv4 address`;
  if (n.subnet6 !== undefined && (typeof n.subnet6 !== 'string' || !/^[0-9a-f:]+\/\d{2,3}$/.test(n.subnet6))) return `field 'subnet6' is not an IPv6 CIDR`;
  if (n.gateway6 !== undefined && !(typeof n.gateway6 === 'string' && isIPv6Address(n.gateway6))) return `field 'gateway6' is not an IPv6 address`;
  if (n.firewall !== undefined && n.firewall !== 'iptables' && n.firewall !== 'nftables') return `field 'firewall' is not iptables or nftables`;
  return null;
}

/** What is wrong with a container record, or null. A missing `ports` is repaired, not an error. */
function containerProblem(id: string, c: unknown): string | null {
  if (!isObject(c)) return 'not an object';
  if (c.id !== id) return `field 'id' is not '${id}'`;
  if (c.mode !== 'veth' && c.mode !== 'shared' && c.mode !== 'tap') return `field 'mode' is not veth, shared or tap`;
  if (!isName(c.bridge)) return `field 'bridge' is not an interface name`;
  if (c.ip !== undefined && !isAddress(c.ip)) return `field 'ip': ${JSON.stringify(c.ip)} is not an IPv4 address`;
  if (c.ip6 !== undefined && !(typeof c.ip6 === 'string' && isIPv6Address(c.ip6))) return `field 'ip6': ${JSON.stringify(c.ip6)} is not an IPv6 address`;
  if (c.prefix !== undefined && !(Number.isInteger(c.prefix) && (c.prefix as number) >= 0 && (c.prefix as number) <= 32)) return `field 'prefix' is not 0-32`;
  for (const k of ['hostVeth', 'iface'] as const) {
    if (c[k] !== undefined && !isName(c[k])) return `field '${k}' is not an interface name`;
  }
  for (const k of ['pid', 'start'] as const) {
    if (c[k] !== undefined && !(Number.isInteger(c[k]) && (c[k] as number) >= 0)) return `field '${k}' is not a whole number`;
  }
  if (c.netns !== undefined && (typeof c.netns !== 'string' || !/^\d+:\d+$/.test(c.netns))) return `field 'netns' is not dev:inode`;
  if (c.nsPath !== undefined && (typeof c.nsPath !== 'string' || !c.nsPath.startsWith('/'))) return `field 'nsPath' is not an absolute path`;
  if (c.cni !== undefined) {
    const a = c.cni as Record<string, unknown>;
    const [containerId = '', ifname = '', ...more] = id.split('/');
    if (!isObject(a) || typeof a.network !== 'string' || more.length || !isCniContainerId(containerId) || !isIfName(ifname)) return `field 'cni' is not a CNI attachment's`;
  }
  if (c.mac !== undefined && (typeof c.mac !== 'string' || !MAC.test(c.mac))) return `field 'mac' is not a MAC address`;
  if (c.guard !== undefined && !isGuard(c.guard)) return `field 'guard' is not an ocinet port guard chain`;
  if (c.firewall !== undefined && c.firewall !== 'iptables' && c.firewall !== 'nftables') return `field 'firewall' is not iptables or nftables`;
  if (c.ports !== undefined) {
    if (!Array.isArray(c.ports)) return `field 'ports' is not a list`;
    for (const p of c.ports as unknown[]) {
      if (!isObject(p) || !isPort(p.hostPort) || !isPort(p.containerPort) || (p.proto !== 'tcp' && p.proto !== 'udp') || (p.hostIp !== undefined && !isAddress(p.hostIp))) return `field 'ports' holds a bad mapping`;
    }
  }
  return null;
}

/**
 * A damaged record reduced to its names: the host veth and the ports chain
 * it holds when they have ocinet's forms (records of the previous version
 * keep theirs), else what its id names in this state dir (`sid`), never a
 * name another state dir could hold. No address (it would be trusted for
 * IPAM), no process: it counts as dead, so the next setup it stands in the
 * way of, or gc, removes its objects.
 */
function salvage(id: string, c: unknown, why: string, sid: string): ContainerRecord {
  const o = isObject(c) ? c : {};
  const bridge = isName(o.bridge) ? o.bridge : '';
  const hostVeth = typeof o.hostVeth === 'string' && /^oc[vt][0-9a-f]{10}$/.test(o.hostVeth) ? o.hostVeth : hostVethName(id, sid);
  const chain = typeof o.chain === 'string' && /^OCINET-DN-(?:[0-9a-f]{12}|[0-9a-f]{8}-[0-9a-f]{9})$/.test(o.chain) ? o.chain : dnatChain(id, sid);
  const tag = o.tag === id || o.tag === containerTag(id, sid) ? (o.tag as string) : containerTag(id, sid);
  // The guard's name follows from the port's: this state dir's, whatever the record said.
  return {
    id, mode: 'veth', bridge, ports: [], hostVeth, chain, tag, guard: guardChain(sid, hostVeth),
    createdAt: typeof o.createdAt === 'string' ? o.createdAt : '', setupPid: 0, damaged: why,
  };
}

export function saveDb(dir: string, db: Db): void {
  const p = dbPath(dir);
  const tmp = `${p}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(db), { mode: 0o600 });
  renameSync(tmp, p);
}

/** Find a container by full id or unique prefix (`sid`: the state dir's id, stateId()). */
export function findContainer(db: Db, idOrPrefix: string, sid: string): ContainerRecord {
  const exact = db.containers[idOrPrefix];
  if (exact) return exact;
  const recovered = recoveredRecord(db, idOrPrefix, sid);
  if (recovered) return recovered;
  const hits = Object.keys(db.containers).filter((k) => k.startsWith(idOrPrefix));
  if (hits.length === 1) return db.containers[hits[0]!]!;
  if (hits.length > 1) throw new OcinetError('EINPUT', `container id '${idOrPrefix}' is ambiguous (${hits.length} match)`);
  throw new OcinetError('ENOTFOUND', `no container '${idOrPrefix}' in ocinet's state`);
}

/**
 * A record rebuilt from kernel objects whose id could not be recovered is
 * keyed by its veth: the id's veth name (this state dir's, or the previous
 * version's) finds it again.
 */
export function recoveredRecord(db: Db, id: string, sid: string): ContainerRecord | undefined {
  const veths = [hostVethName(id, sid), hostVethName(id)];
  return Object.values(db.containers).find((c) => c.recovered && c.hostVeth !== undefined && veths.includes(c.hostVeth));
}
