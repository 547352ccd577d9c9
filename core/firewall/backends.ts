/** Which backend a network uses: the one recorded, or, for a new network, the one asked for. */
import { OcinetError } from '../base/errors.js';
import { hasProgram, run } from '../base/exec.js';
import { BACKENDS, type Backend, type ContainerRecord } from '../state/store.js';
import type { Firewall } from './firewall.js';
import { iptablesFirewall } from './iptables/backend.js';
import { nftablesFirewall } from './nftables/backend.js';

export type BackendChoice = Backend | 'auto';

/** A record's backend: records written before backends existed are iptables'. */
export function firewallOf(b: Backend | undefined): Firewall {
  return b === 'nftables' ? nftablesFirewall : iptablesFirewall;
}

/** Records grouped by their backend, so that each backend handles its own all at once. */
export function byBackend(recs: ContainerRecord[]): Map<Firewall, ContainerRecord[]> {
  const out = new Map<Firewall, ContainerRecord[]>();
  for (const r of recs) {
    const fw = firewallOf(r.firewall);
    out.set(fw, [...(out.get(fw) ?? []), r]);
  }
  return out;
}

export function parseBackendChoice(v: string, where: string): BackendChoice {
  if (v === 'auto' || (BACKENDS as readonly string[]).includes(v)) return v as BackendChoice;
  throw new OcinetError('EINPUT', `${where} '${v}' must be auto, nftables or iptables`);
}

/**
 * `auto`: nftables when `nft` is there and the kernel takes a table, unless
 * iptables' FORWARD policy is DROP (Docker sets it): an nftables accept cannot
 * override another table's drop, while ocinet's iptables chains sit inside
 * FORWARD. Asked once, when a network is made; the network records it.
 */
export async function resolveBackend(choice: BackendChoice): Promise<Backend> {
  if (choice !== 'auto') return choice;
  if (!hasProgram('nft') || (await run('nft', ['list', 'tables'], { allowFail: true })).code !== 0) return 'iptables';
  if (hasProgram('iptables-save')) {
    const filter = await run('iptables-save', ['-t', 'filter'], { allowFail: true });
    if (/^:FORWARD DROP /m.test(filter.stdout)) return 'iptables';
  }
  return 'nftables';
}
