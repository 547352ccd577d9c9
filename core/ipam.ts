/**
 * Address management on top of the state file: the lease is the container
 * record's `ip`. Allocation is sequential after the last address handed out
 * (like host-local), so a just-released address is not reused at once.
 * Callers hold the state lock.
 */
import { contains, hostRange, intToIp, ipToInt, isIPv4, parseSubnet } from './cidr.js';
import { OcinetError } from './errors.js';
import type { Db, NetworkRecord } from './store.js';

export function leasedBy(db: Db, bridge: string): Map<number, string> {
  const used = new Map<number, string>();
  for (const c of Object.values(db.containers)) {
    if (c.bridge === bridge && c.ip && c.mode !== 'shared') used.set(ipToInt(c.ip), c.id);
  }
  return used;
}

/** Pick an address for `id` on `net`: the requested static one, or the next free one. */
export function allocate(db: Db, net: NetworkRecord, id: string, requested?: string): string {
  const sn = parseSubnet(net.subnet);
  const { first, last } = hostRange(sn);
  const used = leasedBy(db, net.bridge);
  if (requested !== undefined) {
    if (!isIPv4(requested)) throw new OcinetError('EINPUT', `static address '${requested}' is not an IPv4 address`);
    const n = ipToInt(requested);
    if (!contains(sn, n)) throw new OcinetError('EINPUT', `static address ${requested} is outside subnet ${net.subnet}`);
    if (n < first || n > last) throw new OcinetError('EINPUT', `static address ${requested} is the network, gateway or broadcast address of ${net.subnet}`);
    const owner = used.get(n);
    if (owner !== undefined && owner !== id) throw new OcinetError('ECONFLICT', `static address ${requested} is already leased to container ${owner}`);
    return requested;
  }
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
  throw new OcinetError('EEXHAUSTED', `no free address left in ${net.subnet} (${size} addresses, all leased)`);
}
