/**
 * Published ports, whatever the backend: parsing the Docker/netavark form
 * `[HOSTIP:]H[-H2]:C[-C2][/tcp|/udp]` (a range becomes one mapping per port)
 * and conflicts between containers.
 */
import { isIPv4 } from '../base/cidr.js';
import { OcinetError } from '../base/errors.js';
import { run } from '../base/exec.js';
import type { Blocks } from '../state/ipam.js';
import type { Db, PortMapping } from '../state/store.js';

/** The most ports one range may map. */
export const MAX_RANGE = 1000;

const SPEC = /^(?:(.*):)?(\d{1,5})(?:-(\d{1,5}))?:(\d{1,5})(?:-(\d{1,5}))?(?:\/(tcp|udp))?$/;
const FORM = '[HOSTIP:]HOSTPORT[-END]:CONTAINERPORT[-END][/tcp|/udp]';

/** One spec, its range expanded into one mapping per port. */
export function parsePorts(spec: string, where: string): PortMapping[] {
  const s = spec.trim();
  const m = SPEC.exec(s);
  if (!m) throw new OcinetError('EINPUT', `${where}: '${spec}' is not ${FORM}`);
  const ip = m[1];
  if (ip !== undefined && !isIPv4(ip)) throw new OcinetError('EINPUT', `${where}: host address '${ip}' in '${spec}' is not an IPv4 address`);
  const range = (lo: string, hi: string | undefined, name: string): [number, number] => {
    const r: [number, number] = [Number(lo), Number(hi ?? lo)];
    for (const p of r) if (p < 1 || p > 65535) throw new OcinetError('EINPUT', `${where}: ${name} ${p} in '${spec}' is outside 1-65535`);
    if (r[0] > r[1]) throw new OcinetError('EINPUT', `${where}: ${name} range ${r[0]}-${r[1]} in '${spec}' is reversed`);
    if (r[1] - r[0] + 1 > MAX_RANGE) throw new OcinetError('EINPUT', `${where}: ${name} range in '${spec}' has ${r[1] - r[0] + 1} ports, more than ${MAX_RANGE}`);
    return r;
  };
  const h = range(m[2]!, m[3], 'host port');
  const c = range(m[4]!, m[5], 'container port');
  if (h[1] - h[0] !== c[1] - c[0]) {
    throw new OcinetError('EINPUT', `${where}: '${spec}' maps ${h[1] - h[0] + 1} host ports to ${c[1] - c[0] + 1} container ports (ranges must be of equal length)`);
  }
  const proto = (m[6] as 'tcp' | 'udp' | undefined) ?? 'tcp';
  const out: PortMapping[] = [];
  for (let i = 0; i <= h[1] - h[0]; i++) {
    const p: PortMapping = { hostPort: h[0] + i, containerPort: c[0] + i, proto };
    // 0.0.0.0 is Docker's spelling of every address: the same as none.
    if (ip !== undefined && ip !== '0.0.0.0') p.hostIp = ip;
    out.push(p);
  }
  return out;
}

/** One spec that must be a single port (no range). */
export function parsePort(spec: string, where: string): PortMapping {
  const ps = parsePorts(spec, where);
  if (ps.length !== 1) throw new OcinetError('EINPUT', `${where}: '${spec}' is a range, one port expected`);
  return ps[0]!;
}

/** Parse a comma list (annotation form); empty items are an error, not ignored. */
export function parsePortList(list: string, where: string): PortMapping[] {
  if (list.trim() === '') return [];
  return list.split(',').flatMap((s) => parsePorts(s, where));
}

/** `[HOSTIP:]H:C/proto`, as `ocinet list` shows a mapping. */
export function formatPort(p: PortMapping): string {
  return `${p.hostIp ? `${p.hostIp}:` : ''}${p.hostPort}:${p.containerPort}/${p.proto}`;
}

/** The host side of a mapping, as conflicts name it: `[HOSTIP:]H/proto`. */
const hostSide = (p: PortMapping): string => `${p.hostIp ? `${p.hostIp}:` : ''}${p.hostPort}/${p.proto}`;

/** Whether two mappings want the same host port: the same proto and port, unless both name different addresses. */
export function clash(a: PortMapping, b: PortMapping): boolean {
  return a.proto === b.proto && a.hostPort === b.hostPort && !(a.hostIp && b.hostIp && a.hostIp !== b.hostIp);
}

export const samePort = (a: PortMapping, b: PortMapping): boolean =>
  a.hostPort === b.hostPort && a.containerPort === b.containerPort && a.proto === b.proto && (a.hostIp ?? '') === (b.hostIp ?? '');

/**
 * Reject a host port asked twice, or already published by another (live)
 * container. A wildcard binding clashes with every binding of its port; two
 * bindings to different host addresses do not clash.
 */
export function checkPortConflicts(ports: PortMapping[], db: Db, id: string, blocks: Blocks = (c) => c): void {
  ports.forEach((p, i) => {
    const twice = ports.slice(0, i).find((q) => clash(p, q));
    if (twice) throw new OcinetError('ECONFLICT', `host port ${hostSide(twice)} is published twice${hostSide(twice) === hostSide(p) ? '' : ` (and as ${hostSide(p)})`}`);
  });
  for (const c of Object.values(db.containers)) {
    if (c.id === id) continue;
    for (const theirs of c.ports) {
      const mine = ports.find((p) => clash(p, theirs));
      if (!mine) continue;
      const live = blocks(c, `host port ${hostSide(mine)} asked by ${id}`);
      if (live) throw new OcinetError('ECONFLICT', `host port ${hostSide(mine)} is already published by container ${live.id}${hostSide(mine) === hostSide(theirs) ? '' : ` (as ${hostSide(theirs)})`}`);
      break; // c was dead and nobody inherits: its other ports are free too
    }
  }
}

/**
 * Stale UDP conntrack entries would keep sending a newly published port's
 * traffic where it went before: flushed once the port's rules are in (side by side).
 */
export async function flushStaleUdp(ports: PortMapping[]): Promise<void> {
  await Promise.all(ports.filter((p) => p.proto === 'udp').map((p) => run('conntrack', ['-D', '-p', 'udp', '--dport', String(p.hostPort)], { allowFail: true })));
}
