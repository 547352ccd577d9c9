/**
 * Network-wide rules of a bridge: outbound MASQUERADE for its subnet, marked
 * (hairpin/localhost) traffic masqueraded, forwarding allowed to and from the
 * bridge. Shared chains are jumped to from the built-in ones once.
 */
import { isJump, purge, restore, RestoreScript, save, savedChain, type Rule, type Table } from './iptables.js';

export const DNAT_CHAIN = 'OCINET-DNAT';
export const POST_CHAIN = 'OCINET-POSTROUTING';
export const FWD_CHAIN = 'OCINET-FORWARD';
/** Mark bit set on published-port traffic that must be masqueraded (same bit CNI portmap uses). */
export const MASQ_MARK = '0x2000';

const COMMENT = ['-m', 'comment', '--comment'];
const JUMP_TAG = [...COMMENT, 'ocinet'];

interface Jump {
  table: Table;
  from: string;
  to: string;
  args: string[];
  insert: boolean;
}

const JUMPS: Jump[] = [
  { table: 'nat', from: 'PREROUTING', to: DNAT_CHAIN, args: ['-m', 'addrtype', '--dst-type', 'LOCAL'], insert: false },
  { table: 'nat', from: 'OUTPUT', to: DNAT_CHAIN, args: ['-m', 'addrtype', '--dst-type', 'LOCAL'], insert: false },
  { table: 'nat', from: 'POSTROUTING', to: POST_CHAIN, args: [], insert: false },
  // Ahead of any DROP policy rules other tools put in FORWARD.
  { table: 'filter', from: 'FORWARD', to: FWD_CHAIN, args: [], insert: true },
];

const netTag = (bridge: string): string => `ocinet-net:${bridge}`;

function networkRules(bridge: string, subnet: string): Rule[] {
  const tag = [...COMMENT, netTag(bridge)];
  return [
    { table: 'nat', chain: POST_CHAIN, args: ['-s', subnet, '!', '-d', subnet, ...tag, '-j', 'MASQUERADE'] },
    { table: 'filter', chain: FWD_CHAIN, args: ['-i', bridge, ...tag, '-j', 'ACCEPT'] },
    {
      table: 'filter',
      chain: FWD_CHAIN,
      args: ['-o', bridge, '-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED,DNAT', ...tag, '-j', 'ACCEPT'],
    },
  ];
}

/** Install the shared chains (if missing) and this network's rules (replacing leftovers). */
export async function installNetworkRules(bridge: string, subnet: string): Promise<void> {
  const script = new RestoreScript();
  for (const table of ['nat', 'filter'] as const) {
    const saved = await save(table);
    const shared = table === 'nat' ? [DNAT_CHAIN, POST_CHAIN] : [FWD_CHAIN];
    for (const c of shared) {
      if (saved.chains.has(c)) continue;
      script.chain(table, c);
      if (c === POST_CHAIN) {
        script.append({ table, chain: c, args: ['-m', 'mark', '--mark', `${MASQ_MARK}/${MASQ_MARK}`, ...JUMP_TAG, '-j', 'MASQUERADE'] });
      }
    }
    for (const j of JUMPS.filter((j) => j.table === table)) {
      if (saved.rules.some((l) => isJump(l, j.from, j.to))) continue;
      const r = { table, chain: j.from, args: [...j.args, ...JUMP_TAG, '-j', j.to] };
      if (j.insert) script.insert(r);
      else script.append(r);
    }
    for (const l of saved.rules) if (l.includes(netTag(bridge))) script.deleteSaved(table, l);
  }
  for (const r of networkRules(bridge, subnet)) script.append(r);
  await restore(script);
}

/**
 * Remove this network's rules; when no other network remains, the shared
 * chains and jumps too. Goes by listing, so it works after partial setups.
 */
export async function removeNetworkRules(bridge: string, lastNetwork: boolean): Promise<void> {
  const tag = netTag(bridge);
  if (!lastNetwork) {
    await purge(['nat', 'filter'], (l) => l.includes(tag), () => false);
    return;
  }
  const ours = (c: string): boolean => c.startsWith('OCINET-');
  await purge(['nat', 'filter'], (l) => l.includes(tag) || JUMPS.some((j) => isJump(l, j.from, j.to)) || ours(savedChain(l)), ours);
}

/** True when every shared jump is in place (for doctor and list). */
export async function sharedRulesPresent(): Promise<boolean> {
  for (const table of ['nat', 'filter'] as const) {
    const saved = await save(table);
    if (!JUMPS.filter((j) => j.table === table).every((j) => saved.rules.some((l) => isJump(l, j.from, j.to)))) return false;
  }
  return true;
}
