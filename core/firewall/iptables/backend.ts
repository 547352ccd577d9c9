/**
 * The iptables backend: a network's rules in ocinet's own chains
 * (network.ts), a container's ports in its DNAT chain (ports.ts), its port
 * guard in the bridge family through ebtables (guard.ts). Rules are found
 * again by exact tags and names; removal is exact, by listing when parts are
 * missing.
 */
import { OcinetError } from '../../base/errors.js';
import type { ContainerRecord } from '../../state/store.js';
import { DNAT_CHAIN_PREFIX } from '../../state/names.js';
import type { Firewall } from '../firewall.js';
import { guardPresent, installGuard, removeGuards, staleGuards, type Guard } from './guard.js';
import { DNAT_CHAIN, installNetworkRules, networkRulesPresent, removeNetworkRules } from './network.js';
import { portsComment, publishScript, unpublishScript, type PortsChain } from './ports.js';
import { isJump, purge, restore, save, savedComment, savedTarget } from './tables.js';

const portsOf = (r: ContainerRecord): PortsChain | null => (r.chain && r.tag ? { chain: r.chain, tag: r.tag } : null);
const guardOf = (r: ContainerRecord): Pick<Guard, 'chain' | 'port'> | null => (r.guard && r.hostVeth ? { chain: r.guard, port: r.hostVeth } : null);

/**
 * Remove a container's ports chain: exactly when we can, by listing when
 * parts are missing. The listing matches the record's comment whole (never a
 * pattern made from the id) and its own chain by name.
 */
async function unpublish(c: PortsChain): Promise<void> {
  if (await restore(unpublishScript(c), true)) return;
  const comment = portsComment(c.tag);
  await purge(['nat'], (l) => savedComment(l) === comment, (ch) => ch === c.chain);
}

/** All the ports chains in one iptables-restore; each on its own only when that fails. */
async function unpublishAll(chains: PortsChain[]): Promise<void> {
  if (chains.length === 0) return;
  if (chains.length > 1 && (await restore(unpublishScript(...chains), true))) return;
  for (const c of chains) await unpublish(c);
}

export const iptablesFirewall: Firewall = {
  backend: 'iptables',
  installNetwork: (n) => installNetworkRules(n.sid, n.bridge, n.subnet),
  removeNetwork: (n) => removeNetworkRules(n.sid, n.bridge),

  async addContainer(_sid, rec, subnet, allowSpoofing) {
    const guard = installGuard({ chain: rec.guard!, port: rec.hostVeth!, mac: rec.mac!, ip: rec.ip!, allowSpoofing });
    const ports = rec.ports.length ? restore(publishScript({ chain: rec.chain!, tag: rec.tag! }, rec.ip!, subnet, rec.ports)) : undefined;
    const done = await Promise.allSettled([guard, ports]);
    for (const d of done) if (d.status === 'rejected') throw d.reason;
  },

  async removeContainers(_sid, recs) {
    const ports = unpublishAll(recs.map(portsOf).filter((c) => c !== null));
    const guards = removeGuards(recs.map(guardOf).filter((g) => g !== null));
    const done = await Promise.allSettled([ports, guards]);
    for (const d of done) if (d.status === 'rejected') throw d.reason;
  },

  // The chain is refilled in one iptables-restore (nat commits atomically). Invariant: OCINET-DNAT jumps to a
  // record's chain while it has ports (setup, reload and this keep it), so the jump is added with the first
  // port only, and the chain goes with the last.
  async setPorts(_sid, rec, before, subnet) {
    const c = portsOf(rec);
    if (!c) throw new OcinetError('ESTATE', `container ${rec.id} has no ports chain in its record`);
    if (rec.ports.length === 0) return before.length ? unpublish(c) : undefined;
    await restore(publishScript(c, rec.ip!, subnet, rec.ports, before.length === 0));
  },

  networkPresent: (n) => networkRulesPresent(n.sid, n.bridge, n.subnet),

  async containerMissing(_sid, rec) {
    const out: string[] = [];
    const g = guardOf(rec);
    if (g && !(await guardPresent(g))) out.push(`port guard ${g.chain} (ebtables nat)`);
    const c = portsOf(rec);
    if (c && rec.ports.length) {
      const nat = await save('nat');
      if (!nat.chains.has(c.chain) || !nat.rules.some((l) => isJump(l, DNAT_CHAIN, c.chain))) out.push(`published ports chain ${c.chain} (iptables nat)`);
    }
    return out;
  },

  // Chains are refilled by name, but jumps to them would be doubled: take the records' rules out first.
  async reapplyContainers(sid, recs, subnetOf) {
    await this.removeContainers(sid, recs);
    for (const r of recs) await this.addContainer(sid, r, subnetOf(r), r.allowSpoofing === true);
  },

  async purgeStale(sid, keep) {
    // Ports chains named with this state dir's identity; the previous version's unnamed ones are left be.
    const chains = new Set(keep.map((c) => c.chain));
    const mine = `${DNAT_CHAIN_PREFIX}${sid}-`;
    const stale = [...(await save('nat')).chains].filter((c) => c.startsWith(mine) && !chains.has(c));
    if (stale.length) await purge(['nat'], (l) => stale.includes(savedTarget(l) ?? ''), (c) => stale.includes(c));
    return [...stale, ...(await staleGuards(sid, new Set(keep.map((c) => c.guard))))];
  },
};
