/**
 * The Linux bridge containers attach to. Created with a pinned MAC, the
 * gateway address and an alias marking it as this state dir's
 * (`ocinet:<state id>`); an existing bridge is reused only when it carries
 * exactly our gateway address and no other state dir's alias.
 */
import { readFileSync } from 'node:fs';
import { ipToInt, maskOf, parseSubnet } from '../base/cidr.js';
import { OcinetError } from '../base/errors.js';
import { run } from '../base/exec.js';
import { bridgeMac } from '../state/names.js';
import { ipBatch } from './netns.js';
import { removeLink } from './rtnl.js';

/** The alias of the previous version's bridges: no state dir named. */
export const LEGACY_BRIDGE_ALIAS = 'ocinet';

/** The alias marking a bridge as made by the state dir with identity `sid`. */
export const bridgeAlias = (sid: string): string => `${LEGACY_BRIDGE_ALIAS}:${sid}`;

/** The state id in an ocinet bridge alias, or undefined (not ocinet's, or the previous version's). */
export function aliasOwner(alias: string | undefined): string | undefined {
  return /^ocinet:([0-9a-f]{8})$/.exec(alias ?? '')?.[1];
}

/** Interface names of the caller's namespace. /proc/net follows the caller's netns; /sys only the mounter's. */
export function linkNames(): Set<string> {
  const names = new Set<string>();
  for (const line of readFileSync('/proc/net/dev', 'utf8').split('\n').slice(2)) {
    const name = line.split(':')[0]!.trim();
    if (name) names.add(name);
  }
  return names;
}

export function linkExists(name: string): boolean {
  return linkNames().has(name);
}

/** One link as `ip -j -d link show` describes it (the fields ocinet reads). */
export interface LinkDetails {
  ifindex: number;
  ifname: string;
  address?: string;
  mtu: number;
  master?: string;
  ifalias?: string;
  linkinfo?: { info_kind?: string; info_data?: { type?: string; multi_queue?: boolean } };
}

/** Every link of the caller's namespace, in detail (one exec). */
export async function allLinkDetails(): Promise<LinkDetails[]> {
  return JSON.parse((await run('ip', ['-j', '-d', 'link', 'show'])).stdout || '[]') as LinkDetails[];
}

/** The link's details, or undefined when there is no such link. */
export async function linkDetails(name: string): Promise<LinkDetails | undefined> {
  const r = await run('ip', ['-j', '-d', 'link', 'show', 'dev', name], { allowFail: true });
  if (r.code !== 0) return undefined;
  return (JSON.parse(r.stdout || '[]') as LinkDetails[])[0];
}

/** True when this state dir made bridge `name` (its alias says so). */
export async function createdByOcinet(name: string, sid: string): Promise<boolean> {
  return (await linkDetails(name))?.ifalias === bridgeAlias(sid);
}

/** The kernel's connected route for the subnet on the bridge: a file read, no exec. */
export function bridgeHasSubnetRoute(bridge: string, subnet: string): boolean {
  const sn = parseSubnet(subnet);
  const hex = (n: number): string => {
    // /proc/net/route prints addresses in host (little-endian) byte order.
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n >>> 0);
    return b.readUInt32LE().toString(16).toUpperCase().padStart(8, '0');
  };
  const dest = hex(sn.network);
  const mask = hex(maskOf(sn.prefix));
  for (const line of readFileSync('/proc/net/route', 'utf8').split('\n')) {
    const f = line.split('\t');
    if (f[0] === bridge && f[1] === dest && f[7] === mask) return true;
  }
  return false;
}

/** A link's IPv4 addresses as `A/PREFIX`. */
export async function ipv4Addresses(dev: string): Promise<string[]> {
  const r = await run('ip', ['-j', '-4', 'addr', 'show', 'dev', dev]);
  const parsed = JSON.parse(r.stdout || '[]') as { addr_info?: { local: string; prefixlen: number }[] }[];
  return (parsed[0]?.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`);
}

/**
 * Make sure `bridge` exists, is up and holds `gateway/prefix`.
 * Returns whether this call created it. Caller holds the state lock.
 */
export async function ensureBridge(sid: string, bridge: string, subnet: string, gateway: string, mtu: number): Promise<boolean> {
  const { prefix } = parseSubnet(subnet);
  const want = `${gateway}/${prefix}`;
  const info = await linkDetails(bridge);
  if (info) {
    if (info.linkinfo?.info_kind !== 'bridge') throw new OcinetError('ECONFLICT', `${bridge} exists and is not a bridge`);
    const owner = aliasOwner(info.ifalias);
    if (owner && owner !== sid) {
      throw new OcinetError('ECONFLICT', `bridge ${bridge} belongs to another ocinet state dir (network id ${owner}); use another --bridge`);
    }
    const addrs = await ipv4Addresses(bridge);
    if (addrs.length && !addrs.includes(want)) {
      throw new OcinetError('ECONFLICT', `bridge ${bridge} exists with address ${addrs.join(', ')}, not ${want}; pick another --bridge or --subnet`);
    }
    const lines = addrs.length ? [] : [`addr add ${want} dev ${bridge}`];
    await ipBatch([...lines, `link set ${bridge} up`]);
    return false;
  }
  void ipToInt(gateway); // validated address
  await ipBatch([
    `link add ${bridge} address ${bridgeMac(bridge)} mtu ${mtu} type bridge`,
    `link set ${bridge} alias ${bridgeAlias(sid)}`,
    `addr add ${want} dev ${bridge}`,
    `link set ${bridge} up`,
  ]);
  return true;
}

/**
 * Delete link `name` if it is there (a veth takes its peer along; a TAP goes
 * even while QEMU holds it). Losing a race with someone else deleting it is fine.
 */
export async function deleteLink(name: string): Promise<void> {
  if (linkExists(name)) removeLink(name);
}
