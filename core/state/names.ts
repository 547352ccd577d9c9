/**
 * Deterministic names derived from ids, so teardown finds them even without
 * state, and the state dir's network identity that keeps two state dirs'
 * objects apart (names, rule tags, bridge alias).
 */
import { realpathSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';

/**
 * 64-bit FNV-1a as hex, from two 32-bit lanes. Names need stability, not
 * secrecy, and node:crypto costs ~2 ms to load on the hook's start path.
 */
export function shortHash(s: string, len: number): string {
  let a = 0x811c9dc5;
  let b = 0xcbf29ce4;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193) >>> 0;
    b = Math.imul(b ^ c ^ (a >>> 13), 0x01000193) >>> 0;
  }
  return (b.toString(16).padStart(8, '0') + a.toString(16).padStart(8, '0')).slice(0, len);
}

/** The path with symlinks resolved as far as it exists (the state dir may not be made yet). */
function realPath(p: string): string {
  try {
    return realpathSync.native(p);
  } catch {
    const up = dirname(p);
    return up === p ? p : join(realPath(up), basename(p));
  }
}

const ids = new Map<string, string>();

/**
 * A state dir's network identity: 8 hex of its real path. It is in every
 * tag, alias and per-container name the state dir makes, so that teardown,
 * reload and gc of one state dir only ever touch its own objects.
 */
export function stateId(stateDir: string): string {
  let id = ids.get(stateDir);
  if (!id) ids.set(stateDir, (id = shortHash(realPath(resolve(stateDir)), 8)));
  return id;
}

/** The hash input of a per-container name: the id alone in records of the previous version. */
const seed = (containerId: string, sid?: string): string => (sid === undefined ? containerId : `${sid}/${containerId}`);

/**
 * Host end of a container's veth: `ocv` + 10 hex = 13 chars (IFNAMSIZ is 16).
 * Without `sid`, the name the previous version gave (records keep their names).
 */
export function hostVethName(containerId: string, sid?: string): string {
  return 'ocv' + shortHash(seed(containerId, sid), 10);
}

/** Host TAP of a VM sandbox the hook sets up: `oct` + 10 hex. */
export function tapName(containerId: string, sid?: string): string {
  return 'oct' + shortHash(seed(containerId, sid), 10);
}

/** A stable, locally administered unicast MAC derived from `seed`. */
function localMac(seed: string): string {
  return ['02', ...shortHash(seed, 10).match(/../g)!].join(':');
}

/** A container's eth0 MAC, stable for its id in this state dir (`sid`); its port guard allows only it. */
export function containerMac(containerId: string, sid: string): string {
  return localMac(`ct:${sid}/${containerId}`);
}

/** The host end of a container's veth: pinned too, so a CNI result names it without asking the kernel. */
export function hostVethMac(containerId: string, sid: string): string {
  return localMac(`host:${sid}/${containerId}`);
}

/** A VM sandbox's NIC MAC, stable for its id. */
export function vmMac(containerId: string): string {
  return localMac('vm:' + containerId);
}

export const DNAT_CHAIN_PREFIX = 'OCINET-DN-';

/**
 * Per-container DNAT chain, named with the state dir's identity so that gc
 * can prove it its own: `OCINET-DN-<sid>-<9 hex>` = 28 chars, the most
 * iptables takes. Without `sid`: the previous version's `OCINET-DN-<12 hex>`.
 */
export function dnatChain(containerId: string, sid?: string): string {
  if (sid === undefined) return DNAT_CHAIN_PREFIX + shortHash(containerId, 12);
  return `${DNAT_CHAIN_PREFIX}${sid}-${shortHash(seed(containerId, sid), 9)}`;
}

export const GUARD_CHAIN_PREFIX = 'OCINET-SP-';

/** The port guard chain (portguard.ts) of host port `port`: `OCINET-SP-<sid>-<9 hex>` = 28 chars, the most ebtables takes. */
export function guardChain(sid: string, port: string): string {
  return `${GUARD_CHAIN_PREFIX}${sid}-${shortHash(port, 9)}`;
}

/** An iptables record's ports chain and the tag its rules carry, as setup and a live publish name them. */
export function portsChainOf(containerId: string, sid: string): { chain: string; tag: string } {
  return { chain: dnatChain(containerId, sid), tag: containerTag(containerId, sid) };
}

/**
 * The tag of a container's rules (comment `ocinet:<tag>`): `<sid>:<id>`,
 * exact. An id too long for a comment (256 bytes) keeps a hash of the whole.
 */
export function containerTag(containerId: string, sid: string): string {
  const id = containerId.length <= 200 ? containerId : `${containerId.slice(0, 180)}~${shortHash(containerId, 16)}`;
  return `${sid}:${id}`;
}

/** A stable, locally administered MAC for a bridge, so it does not change as ports join. */
export function bridgeMac(bridge: string): string {
  return localMac('bridge:' + bridge);
}

const IFNAME = /^[A-Za-z][A-Za-z0-9_.-]{0,14}$/;
export function isIfName(s: string): boolean {
  return IFNAME.test(s);
}

/** A CNI container id as the spec forms it: an alphanumeric, then alphanumerics, _ . - (up to 1024). */
export function isCniContainerId(s: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9_.-]{0,1023}$/.test(s);
}
