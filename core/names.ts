/** Deterministic names derived from ids, so teardown finds them even without state. */
import { createHash } from 'node:crypto';

export function shortHash(s: string, len: number): string {
  return createHash('sha256').update(s).digest('hex').slice(0, len);
}

/** Host end of a container's veth: `ocv` + 10 hex = 13 chars (IFNAMSIZ is 16). */
export function hostVethName(containerId: string): string {
  return 'ocv' + shortHash(containerId, 10);
}

/** Per-container DNAT chain (iptables chain names are at most 28 chars). */
export function dnatChain(containerId: string): string {
  return 'OCINET-DN-' + shortHash(containerId, 12);
}

/** A stable, locally administered MAC for a bridge, so it does not change as ports join. */
export function bridgeMac(bridge: string): string {
  const h = shortHash('bridge:' + bridge, 10);
  return ['02', ...h.match(/../g)!].join(':');
}

const IFNAME = /^[A-Za-z][A-Za-z0-9_.-]{0,14}$/;
export function isIfName(s: string): boolean {
  return IFNAME.test(s);
}
