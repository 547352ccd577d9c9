/**
 * A container's port on the bridge (its host veth, or its VM's TAP) sends only
 * what the container is: frames from its own MAC, IPv4 and ARP from its own
 * address, no other ethertypes (a VLAN tag could carry anything), and never
 * an IPv6 router advertisement or redirect: only the host routes. The rules
 * sit in the bridge family (ebtables, `nat` PREROUTING: before the bridge
 * delivers a frame to the host or forwards it to a neighbour), one chain per
 * port named with the state dir's identity, so gc can prove a chain its own.
 * `--allow-spoofing` keeps only the router-advertisement and redirect drops.
 */
import { run } from '../../base/exec.js';
import { GUARD_CHAIN_PREFIX } from '../../state/names.js';

export interface Guard {
  chain: string;
  /** The host side of the port: a veth or a TAP on the bridge. */
  port: string;
  mac: string;
  ip: string;
  allowSpoofing: boolean;
}

/** ICMPv6 types only a router sends (134 and 137; named as ebtables-save prints them). */
const ROUTER_ONLY = ['router-advertisement', 'redirect'];

function guardLines(g: Guard): string[] {
  const a = (rule: string): string => `-A ${g.chain} ${rule}`;
  const lines = ROUTER_ONLY.map((t) => a(`-p IPv6 --ip6-proto ipv6-icmp --ip6-icmp-type ${t} -j DROP`));
  if (!g.allowSpoofing) {
    lines.push(
      a(`-s ! ${g.mac} -j DROP`),
      a(`-p IPv4 --ip-src ! ${g.ip} -j DROP`),
      a(`-p ARP --arp-ip-src ! ${g.ip} -j DROP`),
      a(`-p ARP --arp-mac-src ! ${g.mac} -j DROP`),
      a('-p IPv4 -j RETURN'),
      a('-p ARP -j RETURN'),
      a('-p IPv6 -j RETURN'),
      a('-j DROP'),
    );
  }
  return lines;
}

const jump = (g: Pick<Guard, 'chain' | 'port'>): string => `PREROUTING -i ${g.port} -j ${g.chain}`;

/** One ebtables-restore: atomic (one nf_tables transaction). */
async function restore(lines: string[], allowFail = false): Promise<boolean> {
  const r = await run('ebtables-restore', ['--noflush'], { input: `*nat\n${lines.join('\n')}\nCOMMIT\n`, allowFail });
  return r.code === 0;
}

/** Install a port's guard (a chain of that name is refilled). */
export async function installGuard(g: Guard): Promise<void> {
  await restore([`:${g.chain} RETURN`, ...guardLines(g), `-A ${jump(g)}`]);
}

const removal = (g: Pick<Guard, 'chain' | 'port'>): string[] => [`-D ${jump(g)}`, `-F ${g.chain}`, `-X ${g.chain}`];

/**
 * Remove guards: exactly, all in one transaction, when every part is there;
 * else by listing (a half-made setup, a port renamed): every jump to each
 * chain, and the chain when present.
 */
export async function removeGuards(gs: Pick<Guard, 'chain' | 'port'>[]): Promise<void> {
  if (gs.length === 0 || (await restore(gs.flatMap(removal), true))) return;
  await purgeGuards(new Set(gs.map((g) => g.chain)));
}

interface SavedNat {
  chains: string[];
  /** `-A CHAIN ...` lines as ebtables-save prints them. */
  rules: string[];
}

async function saveNat(): Promise<SavedNat> {
  const out = (await run('ebtables-save', ['-t', 'nat'])).stdout.split('\n');
  return { chains: out.filter((l) => l.startsWith(':')).map((l) => l.slice(1).split(' ')[0]!), rules: out.filter((l) => l.startsWith('-A ')) };
}

/** Remove the named chains and every rule jumping to them, by listing. */
async function purgeGuards(chains: Set<string>): Promise<void> {
  const saved = await saveNat();
  const lines: string[] = [];
  for (const l of saved.rules) {
    const w = l.split(' ');
    if (chains.has(w[w.length - 1]!) && w[w.length - 2] === '-j') lines.push('-D' + l.slice(2));
  }
  for (const c of saved.chains) if (chains.has(c)) lines.push(`-F ${c}`, `-X ${c}`);
  if (lines.length) await restore(lines);
}

/** Whether a port's guard chain is there with the port's jump to it. */
export async function guardPresent(g: Pick<Guard, 'chain' | 'port'>): Promise<boolean> {
  const saved = await saveNat();
  return saved.chains.includes(g.chain) && saved.rules.includes(`-A ${jump(g)}`);
}

/** gc: this state dir's guard chains that no record names. */
export async function staleGuards(sid: string, keep: ReadonlySet<string | undefined>): Promise<string[]> {
  const mine = `${GUARD_CHAIN_PREFIX}${sid}-`;
  const stale = (await saveNat()).chains.filter((c) => c.startsWith(mine) && !keep.has(c));
  if (stale.length) await purgeGuards(new Set(stale));
  return stale;
}
