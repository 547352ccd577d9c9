/** IPv6 address and subnet math (128-bit BigInts), for dual stack networks. */
import { OcinetError } from './errors.js';

export function isIPv6Address(s: string): boolean {
  // node:net at first use, not with the bundle: it costs ~2 ms of a start that needs no IPv6.
  return process.getBuiltinModule('node:net').isIPv6(s) && !s.includes('%') && !s.includes('.');
}

export function ip6ToBig(ip: string): bigint {
  if (!isIPv6Address(ip)) throw new OcinetError('EINPUT', `'${ip}' is not an IPv6 address`);
  const [head, tail] = ip.includes('::') ? ip.split('::') : [ip, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

/** RFC 5952 text: lower case, the longest run of zero groups (two or more) as `::`. */
export function bigToIp6(n: bigint): string {
  const g = Array.from({ length: 8 }, (_, i) => Number((n >> BigInt(112 - 16 * i)) & 0xffffn));
  let best = -1;
  let len = 0;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > len && j - i >= 2) [best, len] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const hex = g.map((x) => x.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + len).join(':')}`;
}

export interface Subnet6 {
  network: bigint;
  prefix: number;
  /** Canonical text, e.g. fd00:213::/64 */
  cidr: string;
}

const mask6 = (prefix: number): bigint => ((1n << 128n) - 1n) ^ ((1n << BigInt(128 - prefix)) - 1n);

/** Parse `addr/n` (/64 to /120); the address must be the network address. */
export function parseSubnet6(s: string, what = '--subnet6'): Subnet6 {
  const m = /^([0-9A-Fa-f:]+)\/(\d{1,3})$/.exec(s);
  if (!m || !isIPv6Address(m[1]!) || Number(m[2]) > 128) throw new OcinetError('EINPUT', `${what} '${s}' is not IPv6 CIDR (addr/n)`);
  const prefix = Number(m[2]);
  if (prefix < 64 || prefix > 120) throw new OcinetError('EINPUT', `${what} '${s}': prefix must be /64 to /120`);
  const ip = ip6ToBig(m[1]!);
  const network = ip & mask6(prefix);
  if (network !== ip) throw new OcinetError('EINPUT', `${what} '${s}' has host bits set (did you mean ${bigToIp6(network)}/${prefix}?)`);
  return { network, prefix, cidr: `${bigToIp6(network)}/${prefix}` };
}

export function contains6(sn: Subnet6, ip: bigint): boolean {
  return (ip & mask6(sn.prefix)) === sn.network;
}

/** Gateway = the first address after the network's (the bridge's). */
export const gateway6Of = (sn: Subnet6): bigint => sn.network + 1n;

/** Addresses containers may get: after the gateway, up to the last of the subnet. */
export function hostRange6(sn: Subnet6): { first: bigint; last: bigint } {
  return { first: sn.network + 2n, last: sn.network + (1n << BigInt(128 - sn.prefix)) - 1n };
}
