/**
 * Published ports in iptables: the per-container DNAT chain. Hairpin (a
 * container reaching a published port through a host address) and localhost
 * access get a mark that the network's POSTROUTING chain masquerades, as the
 * CNI portmap plugin does.
 */
import type { PortMapping } from '../../state/store.js';
import { DNAT_CHAIN, MASQ_MARK } from './network.js';
import { RestoreScript, type Rule } from './tables.js';

/** A container's ports chain and the tag its rules carry, as its record holds them. */
export interface PortsChain {
  chain: string;
  /** `<state id>:<id>` (names.ts containerTag); the previous version's records hold the bare id. */
  tag: string;
}

/** The comment of a container's rules: `ocinet:<tag>`, matched whole. */
export const portsComment = (tag: string): string => `ocinet:${tag}`.slice(0, 250);

export function tag(t: string): string[] {
  return ['-m', 'comment', '--comment', portsComment(t)];
}

function jumpRule(c: PortsChain): Rule {
  return { table: 'nat', chain: DNAT_CHAIN, args: [...tag(c.tag), '-j', c.chain] };
}

/**
 * Rules publishing `ports` of a container (its record's chain and tag) at
 * `ip`, for a bridge with `subnet`; a mapping with a host address matches
 * only it (`-d`). The chain is made or refilled; `jump: false` when
 * OCINET-DNAT already jumps to it (a refill).
 */
export function publishScript(c: PortsChain, ip: string, subnet: string, ports: PortMapping[], jump = true): RestoreScript {
  const chain = c.chain;
  const s = new RestoreScript().chain('nat', chain);
  for (const p of ports) {
    const match = [...(p.hostIp ? ['-d', `${p.hostIp}/32`] : []), '-p', p.proto, '-m', p.proto, '--dport', String(p.hostPort), ...tag(c.tag)];
    const mark = ['-j', 'MARK', '--set-xmark', `${MASQ_MARK}/${MASQ_MARK}`];
    s.append({ table: 'nat', chain, args: ['-s', subnet, ...match, ...mark] }); // hairpin
    s.append({ table: 'nat', chain, args: ['-s', '127.0.0.0/8', ...match, ...mark] }); // localhost
    s.append({ table: 'nat', chain, args: [...match, '-j', 'DNAT', '--to-destination', `${ip}:${p.containerPort}`] });
  }
  return jump ? s.append(jumpRule(c)) : s;
}

/** Exact removal of what publishScript made for each record (fails if any part is missing). */
export function unpublishScript(...chains: PortsChain[]): RestoreScript {
  const s = new RestoreScript();
  for (const c of chains) s.delete(jumpRule(c)).flush('nat', c.chain).deleteChain('nat', c.chain);
  return s;
}
