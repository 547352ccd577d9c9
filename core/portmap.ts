/**
 * Published ports: parsing `HOSTPORT:CONTAINERPORT[/tcp|/udp]`, conflicts,
 * and the per-container DNAT chain. Hairpin (a container reaching a published
 * port through a host address) and localhost access get a mark that the
 * network's POSTROUTING chain masquerades, as the CNI portmap plugin does.
 */
import { OcinetError } from './errors.js';
import { RestoreScript, type Rule } from './iptables.js';
import { DNAT_CHAIN, MASQ_MARK } from './masquerade.js';
import { dnatChain } from './names.js';
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

export function tag(id: string): string[] {
  return ['-m', 'comment', '--comment', `ocinet:${id}`.slice(0, 250)];
}

function jumpRule(id: string): Rule {
  return { table: 'nat', chain: DNAT_CHAIN, args: [...tag(id), '-j', dnatChain(id)] };
}

/** Rules publishing `ports` of container `id` at `ip`, for a bridge with `subnet`. */
export function publishScript(id: string, ip: string, subnet: string, ports: PortMapping[]): RestoreScript {
  const chain = dnatChain(id);
  const s = new RestoreScript().chain('nat', chain);
  for (const p of ports) {
    const match = ['-p', p.proto, '-m', p.proto, '--dport', String(p.hostPort), ...tag(id)];
    const mark = ['-j', 'MARK', '--set-xmark', `${MASQ_MARK}/${MASQ_MARK}`];
    s.append({ table: 'nat', chain, args: ['-s', subnet, ...match, ...mark] }); // hairpin
    s.append({ table: 'nat', chain, args: ['-s', '127.0.0.0/8', ...match, ...mark] }); // localhost
    s.append({ table: 'nat', chain, args: [...match, '-j', 'DNAT', '--to-destination', `${ip}:${p.containerPort}`] });
  }
  return s.append(jumpRule(id));
}

/** Exact removal of what publishScript made for each id (fails if any part is missing). */
export function unpublishScript(...ids: string[]): RestoreScript {
  const s = new RestoreScript();
  for (const id of ids) {
    const chain = dnatChain(id);
    s.delete(jumpRule(id)).flush('nat', chain).deleteChain('nat', chain);
  }
  return s;
}
