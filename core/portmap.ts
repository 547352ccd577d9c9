/**
 * Published ports: parsing `HOSTPORT:CONTAINERPORT[/tcp|/udp]`, conflicts,
 * and the per-container DNAT chain. Hairpin (a container reaching a published
 * port through a host address) and localhost access get a mark that the
 * network's POSTROUTING chain masquerades, as the CNI portmap plugin does.
 */
import { OcinetError } from './errors.js';
import { RestoreScript, type Rule } from './iptables.js';
import { DNAT_CHAIN, MASQ_MARK } from './masquerade.js';
import type { Blocks } from './ipam.js';
import type { Db, PortMapping } from './store.js';

const SPEC = /^(\d{1,5}):(\d{1,5})(?:\/(tcp|udp))?$/;

export function parsePort(spec: string, where: string): PortMapping {
  const m = SPEC.exec(spec.trim());
  if (!m) throw new OcinetError('EINPUT', `${where}: '${spec}' is not HOSTPORT:CONTAINERPORT[/tcp|/udp]`);
  const hostPort = Number(m[1]);
  const containerPort = Number(m[2]);
  for (const [name, p] of [['host port', hostPort], ['container port', containerPort]] as const) {
    if (p < 1 || p > 65535) throw new OcinetError('EINPUT', `${where}: ${name} ${p} in '${spec}' is outside 1-65535`);
  }
  return { hostPort, containerPort, proto: (m[3] as 'tcp' | 'udp' | undefined) ?? 'tcp' };
}

/** Parse a comma list (annotation form); empty items are an error, not ignored. */
export function parsePortList(list: string, where: string): PortMapping[] {
  if (list.trim() === '') return [];
  return list.split(',').map((s) => parsePort(s, where));
}

/** Reject a host port asked twice, or already published by another (live) container. */
export function checkPortConflicts(ports: PortMapping[], db: Db, id: string, blocks: Blocks = (c) => c): void {
  const seen = new Set<string>();
  for (const p of ports) {
    const key = `${p.hostPort}/${p.proto}`;
    if (seen.has(key)) throw new OcinetError('ECONFLICT', `host port ${key} is published twice`);
    seen.add(key);
  }
  for (const c of Object.values(db.containers)) {
    if (c.id === id) continue;
    const hit = c.ports.find((p) => seen.has(`${p.hostPort}/${p.proto}`));
    const live = hit ? blocks(c, `host port ${hit.hostPort}/${hit.proto} asked by ${id}`) : null;
    if (live) throw new OcinetError('ECONFLICT', `host port ${hit!.hostPort}/${hit!.proto} is already published by container ${live.id}`);
  }
}

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

/** Rules publishing `ports` of a container (its record's chain and tag) at `ip`, for a bridge with `subnet`. */
export function publishScript(c: PortsChain, ip: string, subnet: string, ports: PortMapping[]): RestoreScript {
  const chain = c.chain;
  const s = new RestoreScript().chain('nat', chain);
  for (const p of ports) {
    const match = ['-p', p.proto, '-m', p.proto, '--dport', String(p.hostPort), ...tag(c.tag)];
    const mark = ['-j', 'MARK', '--set-xmark', `${MASQ_MARK}/${MASQ_MARK}`];
    s.append({ table: 'nat', chain, args: ['-s', subnet, ...match, ...mark] }); // hairpin
    s.append({ table: 'nat', chain, args: ['-s', '127.0.0.0/8', ...match, ...mark] }); // localhost
    s.append({ table: 'nat', chain, args: [...match, '-j', 'DNAT', '--to-destination', `${ip}:${p.containerPort}`] });
  }
  return s.append(jumpRule(c));
}

/** Exact removal of what publishScript made for each record (fails if any part is missing). */
export function unpublishScript(...chains: PortsChain[]): RestoreScript {
  const s = new RestoreScript();
  for (const c of chains) s.delete(jumpRule(c)).flush('nat', c.chain).deleteChain('nat', c.chain);
  return s;
}
