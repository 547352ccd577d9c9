/** IPv4 address and subnet math (32-bit integers; small enough not to need a package). */
import { OcinetError } from './errors.js';

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

export function isIPv4(s: string): boolean {
  return IPV4.test(s);
}

export function ipToInt(ip: string): number {
  if (!isIPv4(ip)) throw new OcinetError('EINPUT', `'${ip}' is not an IPv4 address`);
  return ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export interface Subnet {
  /** Network address as an unsigned 32-bit integer. */
  network: number;
  prefix: number;
  /** Canonical text, e.g. 10.77.0.0/16 */
  cidr: string;
}

export function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/** Parse `a.b.c.d/n`; the address must be the network address. */
export function parseSubnet(s: string, what = 'subnet'): Subnet {
  const m = /^([\d.]+)\/(\d{1,2})$/.exec(s);
  if (!m || !isIPv4(m[1]!) || Number(m[2]) > 32) throw new OcinetError('EINPUT', `${what} '${s}' is not IPv4 CIDR (a.b.c.d/n)`);
  const prefix = Number(m[2]);
  if (prefix < 8 || prefix > 30) throw new OcinetError('EINPUT', `${what} '${s}': prefix must be /8 to /30`);
  const ip = ipToInt(m[1]!);
  const network = (ip & maskOf(prefix)) >>> 0;
  if (network !== ip) throw new OcinetError('EINPUT', `${what} '${s}' has host bits set (did you mean ${intToIp(network)}/${prefix}?)`);
  return { network, prefix, cidr: `${intToIp(network)}/${prefix}` };
}

export function broadcast(sn: Subnet): number {
  return (sn.network | (~maskOf(sn.prefix) >>> 0)) >>> 0;
}

export function contains(sn: Subnet, ip: number): boolean {
  return ((ip & maskOf(sn.prefix)) >>> 0) === sn.network;
}

/** Gateway = first usable address. */
export function gatewayOf(sn: Subnet): number {
  return sn.network + 1;
}

/** Addresses containers may get: after the gateway, before broadcast. */
export function hostRange(sn: Subnet): { first: number; last: number } {
  return { first: sn.network + 2, last: broadcast(sn) - 1 };
}
