/**
 * ocinet's state: one JSON file per state directory, replaced atomically
 * (write + rename) and only changed under the state lock. Leases are the
 * `ip` of container records, so an address and its owner can never disagree.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { OcinetError } from './errors.js';

export type Proto = 'tcp' | 'udp';

export interface PortMapping {
  hostPort: number;
  containerPort: number;
  proto: Proto;
}

export interface NetworkRecord {
  bridge: string;
  subnet: string;
  gateway: string;
  /** True when ocinet created the bridge, so it may delete it. */
  createdBridge: boolean;
  /** Last address handed out; allocation continues after it (host-local style). */
  lastIp?: string;
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
  /** Per-container DNAT chain and the id its rules are tagged with (kept when a sharer takes over). */
  chain?: string;
  tag?: string;
  mtu?: number;
  ports: PortMapping[];
  pid?: number;
  /** `dev:inode` of the network namespace, to spot sharing and dead sandboxes. */
  netns?: string;
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

export function emptyDb(): Db {
  return { version: 1, networks: {}, containers: {} };
}

export function ensureStateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
}

export function dbPath(dir: string): string {
  return join(dir, 'state.json');
}

export function loadDb(dir: string): Db {
  let text: string;
  try {
    text = readFileSync(dbPath(dir), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return emptyDb();
    throw new OcinetError('ESTATE', `cannot read ${dbPath(dir)}: ${(e as Error).message}`);
  }
  let db: unknown;
  try {
    db = JSON.parse(text);
  } catch {
    throw new OcinetError('ESTATE', `${dbPath(dir)} is not valid JSON (move it away and run 'ocinet gc')`);
  }
  const d = db as Partial<Db>;
  if (d?.version !== 1 || typeof d.networks !== 'object' || typeof d.containers !== 'object' || !d.networks || !d.containers) {
    throw new OcinetError('ESTATE', `${dbPath(dir)} is not an ocinet state file of version 1`);
  }
  return d as Db;
}

export function saveDb(dir: string, db: Db): void {
  const p = dbPath(dir);
  const tmp = `${p}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(db), { mode: 0o600 });
  renameSync(tmp, p);
}

/** Find a container by full id or unique prefix. */
export function findContainer(db: Db, idOrPrefix: string): ContainerRecord {
  const exact = db.containers[idOrPrefix];
  if (exact) return exact;
  const hits = Object.keys(db.containers).filter((k) => k.startsWith(idOrPrefix));
  if (hits.length === 1) return db.containers[hits[0]!]!;
  if (hits.length > 1) throw new OcinetError('EINPUT', `container id '${idOrPrefix}' is ambiguous (${hits.length} match)`);
  throw new OcinetError('ENOTFOUND', `no container '${idOrPrefix}' in ocinet's state`);
}
