/**
 * Published ports, whatever the backend: parsing `HOSTPORT:CONTAINERPORT[/tcp|/udp]`
 * and conflicts between containers.
 */
import { OcinetError } from '../base/errors.js';
import type { Blocks } from '../state/ipam.js';
import type { Db, PortMapping } from '../state/store.js';

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
