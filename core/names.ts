/** Deterministic names derived from ids, so teardown finds them even without state. */
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

/** Host end of a container's veth: `ocv` + 10 hex = 13 chars (IFNAMSIZ is 16). */
export function hostVethName(containerId: string): string {
  return 'ocv' + shortHash(containerId, 10);
}

/** Host TAP of a VM sandbox the hook sets up: `oct` + 10 hex. */
export function tapName(containerId: string): string {
  return 'oct' + shortHash(containerId, 10);
}

/** A stable, locally administered unicast MAC derived from `seed`. */
function localMac(seed: string): string {
  return ['02', ...shortHash(seed, 10).match(/../g)!].join(':');
}

/** A VM sandbox's NIC MAC, stable for its id. */
export function vmMac(containerId: string): string {
  return localMac('vm:' + containerId);
}

/** Per-container DNAT chain (iptables chain names are at most 28 chars). */
export function dnatChain(containerId: string): string {
  return 'OCINET-DN-' + shortHash(containerId, 12);
}

/** A stable, locally administered MAC for a bridge, so it does not change as ports join. */
export function bridgeMac(bridge: string): string {
  return localMac('bridge:' + bridge);
}

const IFNAME = /^[A-Za-z][A-Za-z0-9_.-]{0,14}$/;
export function isIfName(s: string): boolean {
  return IFNAME.test(s);
}
