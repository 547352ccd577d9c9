/**
 * Address management on top of the state file: the lease is the container
 * record's `ip`. Allocation is sequential after the last address handed out
 * (like host-local), so a just-released address is not reused at once.
 * Callers hold the state lock.
 */
import { contains, hostRange, intToIp, ipToInt, isIPv4, parseSubnet } from '../base/cidr.js';
import { bigToIp6, contains6, hostRange6, ip6ToBig, parseSubnet6 } from '../base/cidr6.js';
import { OcinetError } from '../base/errors.js';
import type { ContainerRecord, Db, NetworkRecord } from './store.js';

/**
 * Asked of a record that stands in the way: the live record that really
 * does (the record itself, or the live sharer that inherited its network),
 * or null when it was dead and has been taken out of the state.
 */
export type Blocks = (c: ContainerRecord, why: string) => ContainerRecord | null;
const always: Blocks = (c) => c;

export function leasedBy(db: Db, bridge: string): Map<number, ContainerRecord> {
  const used = new Map<number, ContainerRecord>();
  for (const c of Object.values(db.containers)) {
    if (c.bridge === bridge && c.ip && c.mode !== 'shared') used.set(ipToInt(c.ip), c);
  }
  return used;
}

/**
 * Pick an address for `id` on `net`: the requested static one, or the next
 * free one. Dead leases do not count where they are in the way (the static
 * address, a full pool); elsewhere they are skipped and left to gc.
 */
export function allocate(db: Db, net: NetworkRecord, id: string, requested?: string, blocks: Blocks = always): string {
  const sn = parseSubnet(net.subnet);
  const { first, last } = hostRange(sn);
  let used = leasedBy(db, net.bridge);
  if (requested !== undefined) {
    if (!isIPv4(requested)) throw new OcinetError('EINPUT', `static address '${requested}' is not an IPv4 address`);
    const n = ipToInt(requested);
    if (!contains(sn, n)) throw new OcinetError('EINPUT', `static address ${requested} is outside subnet ${net.subnet}`);
    if (n < first || n > last) throw new OcinetError('EINPUT', `static address ${requested} is the network, gateway or broadcast address of ${net.subnet}`);
    const owner = used.get(n);
    const live = owner && owner.id !== id ? blocks(owner, `static address ${requested} asked by ${id}`) : null;
    if (live) throw new OcinetError('ECONFLICT', `static address ${requested} is already leased to container ${live.id}`);
    return requested;
  }
  const next = nextFree(net, used, first, last);
  if (next !== null) return next;
  // Full: the dead leases are in the way now.
  const dead = [...used.values()].filter((c) => !blocks(c, `address pool ${net.subnet} full at ${id}'s setup`));
  // (A dead owner handed over to a live sharer still holds its address: not counted.)
  if (dead.length) {
    used = leasedBy(db, net.bridge);
    const again = nextFree(net, used, first, last);
    if (again !== null) return again;
  }
  throw new OcinetError('EEXHAUSTED', `no free address left in ${net.subnet} (${last - first + 1} addresses, all leased)`);
}

function nextFree(net: NetworkRecord, used: Map<number, unknown>, first: number, last: number): string | null {
  const size = last - first + 1;
  const lastIp = net.lastIp && isIPv4(net.lastIp) ? ipToInt(net.lastIp) : first - 1;
  const start = lastIp >= first && lastIp <= last ? lastIp + 1 : first;
  for (let i = 0; i < size; i++) {
    const n = first + ((start - first + i) % size);
    if (!used.has(n)) {
      net.lastIp = intToIp(n);
      return net.lastIp;
    }
  }
  return null;
}

/**
 * The container's IPv6 address on a dual stack network: the requested static
 * one, or the next free after the last handed out (a /64 is never full in
 * practice; its scan is bounded by the leases there are).
 */
export function allocate6(db: Db, net: NetworkRecord, id: string, requested?: string, blocks: Blocks = always): string {
  const sn = parseSubnet6(net.subnet6!);
  const { first, last } = hostRange6(sn);
  const used = new Map<bigint, ContainerRecord>();
  for (const c of Object.values(db.containers)) if (c.bridge === net.bridge && c.ip6 && c.mode !== 'shared') used.set(ip6ToBig(c.ip6), c);
  if (requested !== undefined) {
    const n = ip6ToBig(requested);
    if (!contains6(sn, n)) throw new OcinetError('EINPUT', `static address ${requested} is outside subnet ${net.subnet6}`);
    if (n < first) throw new OcinetError('EINPUT', `static address ${requested} is the network or gateway address of ${net.subnet6}`);
    const owner = used.get(n);
    const live = owner && owner.id !== id ? blocks(owner, `static address ${requested} asked by ${id}`) : null;
    if (live) throw new OcinetError('ECONFLICT', `static address ${requested} is already leased to container ${live.id}`);
    return bigToIp6(n);
  }
  const after = net.lastIp6 ? ip6ToBig(net.lastIp6) : first - 1n;
  let n = after >= first && after < last ? after + 1n : first;
  for (let tried = 0n; tried <= BigInt(used.size); tried++) {
    // Dead leases are skipped, not reclaimed: the v4 choice already met the ones in the way.
    if (!used.has(n)) {
      net.lastIp6 = bigToIp6(n);
      return net.lastIp6;
    }
    n = n >= last ? first : n + 1n;
  }
  throw new OcinetError('EEXHAUSTED', `no free address left in ${net.subnet6}`);
}
