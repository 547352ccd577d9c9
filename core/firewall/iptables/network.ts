/**
 * Network-wide rules of a bridge: outbound MASQUERADE for its subnet, marked
 * (hairpin/localhost) traffic masqueraded, forwarding allowed to and from the
 * bridge after the admin's own FORWARD rules, and the localhost guard. Shared
 * chains are jumped to from the built-in ones once.
 *
 * FORWARD, in order: `OCINET-USER` (the admin's chain, first: ocinet creates it
 * empty and never changes what is in it), the admin's own FORWARD rules, then
 * `OCINET-FORWARD` (appended, so a DROP or REJECT of the admin's wins over
 * ocinet's accepts). INPUT: `OCINET-INPUT` first; it only drops.
 */
import { OcinetError } from '../../base/errors.js';
import { isJump, restore, RestoreScript, save, savedChain, savedComment, savedTarget, type Rule, type SavedTable, type Table } from './tables.js';
import { DNAT_CHAIN_PREFIX } from '../../state/names.js';

export const DNAT_CHAIN = 'OCINET-DNAT';
export const POST_CHAIN = 'OCINET-POSTROUTING';
export const FWD_CHAIN = 'OCINET-FORWARD';
export const INPUT_CHAIN = 'OCINET-INPUT';
/** The admin's chain, evaluated before any of ocinet's accepts (like Docker's DOCKER-USER). */
export const USER_CHAIN = 'OCINET-USER';
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
  // Drops only: first, so no accept of the admin's lets a container at the host's 127.0.0.1.
  { table: 'filter', from: 'INPUT', to: INPUT_CHAIN, args: [], insert: true },
  { table: 'filter', from: 'FORWARD', to: USER_CHAIN, args: [], insert: true },
  // After the admin's own FORWARD rules: ocinet's accepts never override them.
  { table: 'filter', from: 'FORWARD', to: FWD_CHAIN, args: [], insert: false },
];

const NET_TAG = 'ocinet-net:';
/** A network's rules are tagged `ocinet-net:<state id>:<bridge>`; the previous version wrote `ocinet-net:<bridge>`. */
const netTag = (sid: string, bridge: string): string => `${NET_TAG}${sid}:${bridge}`;

/** The network a saved rule is tagged with (exact comment), or undefined: `sid` is undefined for the old form. */
function networkOf(line: string): { sid?: string; bridge: string } | undefined {
  const c = savedComment(line);
  if (!c?.startsWith(NET_TAG)) return undefined;
  const m = /^([0-9a-f]{8}):(.+)$/.exec(c.slice(NET_TAG.length));
  return m ? { sid: m[1]!, bridge: m[2]! } : { bridge: c.slice(NET_TAG.length) };
}

/** This state dir's rules for `bridge`, and the previous version's untagged ones for it (adopted). */
const ownRule = (sid: string, bridge: string) => (line: string): boolean => {
  const n = networkOf(line);
  return n !== undefined && n.bridge === bridge && (n.sid === sid || n.sid === undefined);
};

function networkRules(sid: string, bridge: string, subnet: string): Rule[] {
  const tag = [...COMMENT, netTag(sid, bridge)];
  return [
    { table: 'nat', chain: POST_CHAIN, args: ['-s', subnet, '!', '-d', subnet, ...tag, '-j', 'MASQUERADE'] },
    // The localhost guard (CVE-2020-8558's class): route_localnet lets 127.0.0.0/8 in on the
    // bridge for the replies of 127.0.0.1 publishing; anything else a container sends there is dropped.
    {
      table: 'filter',
      chain: INPUT_CHAIN,
      args: ['-i', bridge, '-d', '127.0.0.0/8', '-m', 'conntrack', '!', '--ctstate', 'RELATED,ESTABLISHED,DNAT', ...tag, '-j', 'DROP'],
    },
    { table: 'filter', chain: FWD_CHAIN, args: ['-i', bridge, ...tag, '-j', 'ACCEPT'] },
    {
      table: 'filter',
      chain: FWD_CHAIN,
      args: ['-o', bridge, '-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED,DNAT', ...tag, '-j', 'ACCEPT'],
    },
  ];
}

/**
 * Install the shared chains (if missing) and this network's rules (replacing
 * leftovers). A bridge another state dir has rules for is refused: two state
 * dirs on one bridge would hand out the same addresses.
 */
export async function installNetworkRules(sid: string, bridge: string, subnet: string): Promise<void> {
  const script = new RestoreScript();
  const own = ownRule(sid, bridge);
  for (const table of ['nat', 'filter'] as const) {
    const saved = await save(table);
    const other = saved.rules.map(networkOf).find((n) => n?.bridge === bridge && n.sid !== undefined && n.sid !== sid);
    if (other) {
      throw new OcinetError('ECONFLICT', `bridge ${bridge} is in use by another ocinet state dir (network id ${other.sid}); use another --bridge`);
    }
    const shared = table === 'nat' ? [DNAT_CHAIN, POST_CHAIN] : [INPUT_CHAIN, USER_CHAIN, FWD_CHAIN];
    // The previous version inserted its FORWARD jump first: move it after the admin's rules.
    if (table === 'filter' && !saved.rules.some((l) => isJump(l, 'FORWARD', USER_CHAIN))) {
      for (const l of saved.rules) if (isJump(l, 'FORWARD', FWD_CHAIN)) script.deleteSaved(table, l);
      saved.rules = saved.rules.filter((l) => !isJump(l, 'FORWARD', FWD_CHAIN));
    }
    for (const c of shared) if (!saved.chains.has(c)) script.chain(table, c);
    // The mark's MASQUERADE: made with its chain, and made again when someone flushed the chain.
    const markRule = (l: string): boolean => savedChain(l) === POST_CHAIN && savedComment(l) === 'ocinet' && savedTarget(l) === 'MASQUERADE';
    if (table === 'nat' && !saved.rules.some(markRule)) {
      script.append({ table, chain: POST_CHAIN, args: ['-m', 'mark', '--mark', `${MASQ_MARK}/${MASQ_MARK}`, ...JUMP_TAG, '-j', 'MASQUERADE'] });
    }
    for (const j of JUMPS.filter((j) => j.table === table)) {
      if (saved.rules.some((l) => isJump(l, j.from, j.to))) continue;
      const r = { table, chain: j.from, args: [...j.args, ...JUMP_TAG, '-j', j.to] };
      if (j.insert) script.insert(r);
      else script.append(r);
    }
    for (const l of saved.rules) if (own(l)) script.deleteSaved(table, l);
  }
  for (const r of networkRules(sid, bridge, subnet)) script.append(r);
  await restore(script);
}

const SHARED = new Set([DNAT_CHAIN, POST_CHAIN, FWD_CHAIN, INPUT_CHAIN]);

/** A rule that keeps the shared chains: anything in them but their own mark rule, or a ports chain. */
function keepsShared(table: Table, line: string): boolean {
  const chain = savedChain(line);
  if (chain.startsWith(DNAT_CHAIN_PREFIX)) return true;
  if (!SHARED.has(chain)) return false;
  return !(table === 'nat' && chain === POST_CHAIN && savedComment(line) === 'ocinet');
}

/**
 * Remove this network's rules (this state dir's tag, exactly). The shared
 * chains and their jumps go too when no rule of any network, of any state
 * dir, is left in them: decided by listing, not by one state's records, so
 * it also works after partial setups.
 */
export async function removeNetworkRules(sid: string, bridge: string): Promise<void> {
  const own = ownRule(sid, bridge);
  const saved: [Table, SavedTable][] = [];
  for (const table of ['nat', 'filter'] as const) saved.push([table, await save(table)]);
  const script = new RestoreScript();
  const inUse = saved.some(([table, s]) => s.rules.some((l) => !own(l) && keepsShared(table, l)));
  for (const [table, s] of saved) {
    for (const l of s.rules) {
      const jump = JUMPS.some((j) => j.table === table && isJump(l, j.from, j.to));
      if (own(l) || (!inUse && (jump || SHARED.has(savedChain(l))))) script.deleteSaved(table, l);
    }
    if (!inUse) for (const c of s.chains) if (SHARED.has(c)) script.deleteChain(table, c);
    // The admin's chain goes only when empty: what the admin put there stays for the next network.
    const userRules = s.rules.some((l) => savedChain(l) === USER_CHAIN);
    if (!inUse && table === 'filter' && s.chains.has(USER_CHAIN) && !userRules) script.deleteChain(table, USER_CHAIN);
  }
  await restore(script);
}

/** True when every shared jump and every rule of this network is in place (doctor). */
export async function networkRulesPresent(sid: string, bridge: string, subnet: string): Promise<boolean> {
  const tag = netTag(sid, bridge);
  const want = networkRules(sid, bridge, subnet);
  for (const table of ['nat', 'filter'] as const) {
    const saved = await save(table);
    if (!JUMPS.filter((j) => j.table === table).every((j) => saved.rules.some((l) => isJump(l, j.from, j.to)))) return false;
    const have = saved.rules.filter((l) => savedComment(l) === tag).length;
    if (have < want.filter((r) => r.table === table).length) return false;
  }
  return true;
}
