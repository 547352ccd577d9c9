/**
 * kata-network's contract: the interface and route shapes it takes and
 * prints, and their validation (schemas, then what a schema cannot say).
 * Shared by the container and VM sides.
 */
import { OcinetError } from '../base/errors.js';
import { check } from '../base/validate.js';
import { validateKataIface, validateKataIfaceName, validateKataIfaces, validateKataRoute } from '../generated/validators.js';
import { intToIp, ipToInt, isIPv4, maskOf } from '../base/cidr.js';
import { bigToIp6, ip6ToBig, isIPv6Address } from '../base/cidr6.js';

// ---- contract: input and output shapes ----

export interface IfaceInput {
  device: string;
  name: string;
  IPAddresses?: { address: string; mask: string | number }[];
  hwAddr: string;
  mtu: number;
  vhostUserSocket?: string;
  queues?: number;
}

/** kata prints addresses as {Family, Address, Mask}; Family 2 is AF_INET. */
export interface IfaceOutput {
  device: string;
  name: string;
  IPAddresses: { Family: number; Address: string; Mask: string }[] | null;
  mtu: number;
  hwAddr: string;
  pciAddr?: string;
  linkType?: string;
}

export interface RouteSpec {
  dest: string;
  gateway?: string;
  device?: string;
}

export interface ListedIface {
  name: string;
  mac: string;
  ip: string[];
  mtu: number;
}

/** What ocinet did for one added interface, so del-iface and teardown can undo exactly that. */
export interface AddedIface {
  device: string;
  name: string;
  hwAddr: string;
  mtu: number;
  address?: string;
  prefix?: number;
  /** Its IPv6 address, when it has one. */
  address6?: string;
  prefix6?: number;
  /** moved: an existing host device moved in; veth: a pair ocinet created; tap: a VM NIC. */
  kind: 'moved' | 'veth' | 'tap';
  origMac?: string;
  origMtu?: number;
  /** The host device's index (a moved device before it went; the host end of a created veth). */
  hostIndex?: number;
  /** Its index inside the sandbox. */
  innerIndex?: number;
  queues: number;
  linkType?: string;
  pciAddr?: string;
}

// ---- validation ----

/** An interface address: IPv4 with mask 0-32, or IPv6 with 0-128. Returns the family. */
function checkIp(address: string, mask: string | number, where: string): 4 | 6 {
  const family = isIPv4(address) ? 4 : isIPv6Address(address) ? 6 : 0;
  if (!family) throw new OcinetError('EINPUT', `${where}: '${address}' is not an IPv4 or IPv6 address`);
  const m = String(mask);
  const max = family === 4 ? 32 : 128;
  if (!/^\d{1,3}$/.test(m) || Number(m) > max) throw new OcinetError('EINPUT', `${where}: mask '${m}' of ${address} must be 0-${max}`);
  return family;
}

/** The interface's address of one family, as AddedIface keeps it. */
export function addressOf(i: IfaceInput, family: 4 | 6): { address: string; prefix: number } | undefined {
  const a = (i.IPAddresses ?? []).find((x) => (family === 4 ? isIPv4(x.address) : isIPv6Address(x.address)));
  return a ? { address: family === 6 ? bigToIp6(ip6ToBig(a.address)) : a.address, prefix: Number(a.mask) } : undefined;
}

export function parseIface(data: unknown, where = 'interface'): IfaceInput {
  const i = check<IfaceInput>(validateKataIface, data, where);
  const families = (i.IPAddresses ?? []).map((a) => checkIp(a.address, a.mask, `${where} field 'IPAddresses'`));
  if (families.length === 2 && families[0] === families[1]) throw new OcinetError('EINPUT', `${where} field 'IPAddresses': one address per family (an IPv4 and an IPv6)`);
  const first = parseInt(i.hwAddr.slice(0, 2), 16);
  if (first & 1) throw new OcinetError('EINPUT', `${where} field 'hwAddr': ${i.hwAddr} is a multicast address, not a unicast MAC`);
  if (/^(00:){5}00$/.test(i.hwAddr)) throw new OcinetError('EINPUT', `${where} field 'hwAddr': all-zero MAC`);
  return { ...i, hwAddr: i.hwAddr.toLowerCase(), queues: i.queues ?? 0 };
}

export function parseIfaces(data: unknown, where: string): IfaceInput[] {
  const list = check<unknown[]>(validateKataIfaces, data, where);
  const out = list.map((d, n) => parseIface(d, `${where}[${n}]`));
  const names = new Set<string>();
  const devices = new Set<string>();
  for (const i of out) {
    if (names.has(i.name)) throw new OcinetError('EINPUT', `${where}: name '${i.name}' appears twice`);
    if (devices.has(i.device)) throw new OcinetError('EINPUT', `${where}: device '${i.device}' appears twice`);
    names.add(i.name);
    devices.add(i.device);
  }
  return out;
}

export function parseIfaceName(data: unknown): string {
  return check<{ name: string }>(validateKataIfaceName, data, 'interface').name;
}

/** `default`, `a.b.c.d` (= /32) or `a.b.c.d/n` without host bits; returns the kernel's spelling. */
export function canonicalDest(dest: string, where: string): string {
  if (dest === 'default') return 'default';
  const [ip, len, extra] = dest.split('/');
  if (extra === undefined && ip && isIPv6Address(ip)) {
    // IPv6: `addr` (= /128) or `net/n`, in the kernel's spelling.
    const prefix = len === undefined ? 128 : /^\d{1,3}$/.test(len) && Number(len) <= 128 ? Number(len) : -1;
    if (prefix < 0) throw new OcinetError('EINPUT', `${where} field 'dest': mask in '${dest}' must be 0-128`);
    const n = ip6ToBig(ip);
    const host = (1n << BigInt(128 - prefix)) - 1n;
    if ((n & host) !== 0n) throw new OcinetError('EINPUT', `${where} field 'dest': '${dest}' has host bits set`);
    return prefix === 128 ? bigToIp6(n) : `${bigToIp6(n)}/${prefix}`;
  }
  if (extra !== undefined || !ip || !isIPv4(ip)) throw new OcinetError('EINPUT', `${where} field 'dest': '${dest}' is not default, IP or IP/mask`);
  const prefix = len === undefined ? 32 : /^\d{1,2}$/.test(len) && Number(len) <= 32 ? Number(len) : -1;
  if (prefix < 0) throw new OcinetError('EINPUT', `${where} field 'dest': mask in '${dest}' must be 0-32`);
  const n = ipToInt(ip);
  if (((n & maskOf(prefix)) >>> 0) !== n) throw new OcinetError('EINPUT', `${where} field 'dest': '${dest}' has host bits set`);
  return prefix === 32 ? ip : `${intToIp(n)}/${prefix}`;
}

/** A route object or an array of them; `forAdd` requires `device` (kata: mandatory for add). */
export function parseRoutes(data: unknown, forAdd: boolean, where = 'route'): RouteSpec[] {
  const list = Array.isArray(data) ? data : [data];
  if (list.length === 0) throw new OcinetError('EINPUT', `${where}: empty array`);
  return list.map((d, n) => {
    const w = Array.isArray(data) ? `${where}[${n}]` : where;
    const r = check<RouteSpec>(validateKataRoute, d, w);
    canonicalDest(r.dest, w);
    if (r.gateway !== undefined && !isIPv4(r.gateway) && !isIPv6Address(r.gateway)) throw new OcinetError('EINPUT', `${w} field 'gateway': '${r.gateway}' is not an IPv4 or IPv6 address`);
    const six = (s: string): boolean => s.includes(':');
    if (r.gateway !== undefined && r.dest !== 'default' && six(r.gateway) !== six(r.dest)) {
      throw new OcinetError('EINPUT', `${w}: dest '${r.dest}' and gateway '${r.gateway}' are of different families`);
    }
    if (forAdd && r.dest === 'default' && r.gateway === undefined) throw new OcinetError('EINPUT', `${w}: dest 'default' needs a gateway`);
    if (forAdd && r.device === undefined) throw new OcinetError('EINPUT', `${w}: missing required field 'device'`);
    return r;
  });
}

export function ifaceOutput(a: AddedIface): IfaceOutput {
  const out: IfaceOutput = {
    device: a.device,
    name: a.name,
    // kata prints the family as AF_INET (2) or AF_INET6 (10).
    IPAddresses: a.address || a.address6
      ? [
          ...(a.address ? [{ Family: 2, Address: a.address, Mask: String(a.prefix) }] : []),
          ...(a.address6 ? [{ Family: 10, Address: a.address6, Mask: String(a.prefix6) }] : []),
        ]
      : null,
    mtu: a.mtu,
    hwAddr: a.hwAddr,
  };
  if (a.pciAddr) out.pciAddr = a.pciAddr;
  if (a.linkType) out.linkType = a.linkType;
  return out;
}
