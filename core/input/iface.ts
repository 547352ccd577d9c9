/**
 * kata-network's contract: the interface and route shapes it takes and
 * prints, and their validation (schemas, then what a schema cannot say).
 * Shared by the container and VM sides.
 */
import { OcinetError } from '../base/errors.js';
import { check } from '../base/validate.js';
import { validateKataIface, validateKataIfaceName, validateKataIfaces, validateKataRoute } from '../generated/validators.js';
import { intToIp, ipToInt, isIPv4, maskOf } from '../base/cidr.js';

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

function checkIp(address: string, mask: string | number, where: string): number {
  if (!isIPv4(address)) throw new OcinetError('EINPUT', `${where}: '${address}' is not an IPv4 address`);
  const m = String(mask);
  if (!/^\d{1,2}$/.test(m) || Number(m) > 32) throw new OcinetError('EINPUT', `${where}: mask '${m}' must be 0-32`);
  return Number(m);
}

export function parseIface(data: unknown, where = 'interface'): IfaceInput {
  const i = check<IfaceInput>(validateKataIface, data, where);
  for (const a of i.IPAddresses ?? []) checkIp(a.address, a.mask, `${where} field 'IPAddresses'`);
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
    if (r.gateway !== undefined && !isIPv4(r.gateway)) throw new OcinetError('EINPUT', `${w} field 'gateway': '${r.gateway}' is not an IPv4 address`);
    if (forAdd && r.dest === 'default' && r.gateway === undefined) throw new OcinetError('EINPUT', `${w}: dest 'default' needs a gateway`);
    if (forAdd && r.device === undefined) throw new OcinetError('EINPUT', `${w}: missing required field 'device'`);
    return r;
  });
}

export function ifaceOutput(a: AddedIface): IfaceOutput {
  const out: IfaceOutput = {
    device: a.device,
    name: a.name,
    IPAddresses: a.address ? [{ Family: 2, Address: a.address, Mask: String(a.prefix) }] : null,
    mtu: a.mtu,
    hwAddr: a.hwAddr,
  };
  if (a.pciAddr) out.pciAddr = a.pciAddr;
  if (a.linkType) out.linkType = a.linkType;
  return out;
}
