/**
 * The nftables backend: a state dir's rules are two tables of its own,
 * `inet ocinet-<sid>` (NAT, published ports, the localhost guard; one rule
 * set for both families) and `bridge ocinet-<sid>` (port guards), with base
 * chains on their own hooks, never jumps added to anyone's chains. Their
 * rules are fixed; networks and containers are set and map elements, so that
 * a container's whole life is one `nft -f -` transaction in and one out
 * (atomic: a failure leaves nothing half-applied), and nothing is found
 * again by rule handles. An `accept` here decides nothing for other tables:
 * the admin's drops, in any table, apply to containers as to anything else.
 */
import { OcinetError } from '../../base/errors.js';
import { run } from '../../base/exec.js';
import { native, type NftAnswer } from '../../base/native.js';
import type { ContainerRecord, PortMapping } from '../../state/store.js';
import type { Firewall, NetworkRules } from '../firewall.js';

/** Mark of published-port traffic that must be masqueraded (hairpin, 127.0.0.1): the iptables backend's bit. */
const MASQ_MARK = '0x2000';

export const tableName = (sid: string): string => `ocinet-${sid}`;

/** The fixed rules, made idempotent: `add` of what exists is a no-op, chains are refilled. */
function skeleton(sid: string): string[] {
  const t = `inet ${tableName(sid)}`;
  const b = `bridge ${tableName(sid)}`;
  const chains: [string, string][] = [
    ['postrouting', '{ type nat hook postrouting priority srcnat; }'],
    ['prerouting', '{ type nat hook prerouting priority dstnat; }'],
    ['output', '{ type nat hook output priority -100; }'],
    ['input', '{ type filter hook input priority filter; }'],
    ['ports', ''],
  ];
  return [
    `add table ${t}`,
    `add set ${t} nets4 { type ipv4_addr; flags interval; }`,
    `add set ${t} bridges { type ifname; }`,
    `add set ${t} pub { type inet_proto . inet_service; }`,
    `add map ${t} dnat4 { type inet_proto . inet_service : ipv4_addr . inet_service; }`,
    `add set ${t} nets6 { type ipv6_addr; flags interval; }`,
    `add map ${t} dnat6 { type inet_proto . inet_service : ipv6_addr . inet_service; }`,
    // Bindings to one host address (`127.0.0.1:8080:80`): keyed by that address too, looked up first.
    `add set ${t} pubip { type ipv4_addr . inet_proto . inet_service; }`,
    `add map ${t} dnat4ip { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }`,
    ...chains.map(([c, spec]) => `add chain ${t} ${c} ${spec}`.trimEnd()),
    ...chains.map(([c]) => `flush chain ${t} ${c}`),
    `add rule ${t} prerouting fib daddr type local jump ports`,
    `add rule ${t} output fib daddr type local jump ports`,
    // Hairpin and 127.0.0.1: marked, then masqueraded, as the CNI portmap plugin does.
    `add rule ${t} ports ip saddr @nets4 meta l4proto . th dport @pub meta mark set meta mark | ${MASQ_MARK}`,
    `add rule ${t} ports ip saddr 127.0.0.0/8 meta l4proto . th dport @pub meta mark set meta mark | ${MASQ_MARK}`,
    `add rule ${t} ports ip saddr @nets4 ip daddr . meta l4proto . th dport @pubip meta mark set meta mark | ${MASQ_MARK}`,
    `add rule ${t} ports ip saddr 127.0.0.0/8 ip daddr . meta l4proto . th dport @pubip meta mark set meta mark | ${MASQ_MARK}`,
    // No element: the lookup does not match and the next rule runs.
    `add rule ${t} ports meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @dnat4ip`,
    `add rule ${t} ports meta nfproto ipv4 dnat ip to meta l4proto . th dport map @dnat4`,
    // Dual stack: the same for IPv6 (there is no route_localnet for ::1: publishing answers on the host's other v6 addresses).
    `add rule ${t} ports ip6 saddr @nets6 meta l4proto . th dport @pub meta mark set meta mark | ${MASQ_MARK}`,
    `add rule ${t} ports meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @dnat6`,
    `add rule ${t} postrouting meta mark & ${MASQ_MARK} == ${MASQ_MARK} masquerade`,
    `add rule ${t} postrouting ip saddr @nets4 ip daddr != @nets4 masquerade`,
    `add rule ${t} postrouting ip6 saddr @nets6 ip6 daddr != @nets6 masquerade`,
    // The localhost guard: what a container sends to 127.0.0.0/8 is dropped unless it belongs to a published port.
    `add rule ${t} input iifname @bridges ip daddr 127.0.0.0/8 ct state & (established | related) == 0 ct status & dnat == 0 drop`,
    `add table ${b}`,
    `add set ${b} ports { type ifname; }`,
    `add set ${b} guarded { type ifname; }`,
    `add set ${b} portmac { type ifname . ether_addr; }`,
    `add set ${b} portip { type ifname . ipv4_addr; }`,
    `add set ${b} portip6 { type ifname . ipv6_addr; }`,
    `add chain ${b} prerouting { type filter hook prerouting priority -300; }`,
    `flush chain ${b} prerouting`,
    // Only the host routes: no router advertisement or redirect from any container port.
    // (Counters: the admin sees what the guards dropped, `nft list table bridge ocinet-<sid>`.)
    `add rule ${b} prerouting iifname @ports icmpv6 type { nd-router-advert, nd-redirect } counter drop`,
    `add rule ${b} prerouting iifname @guarded iifname . ether saddr != @portmac counter drop`,
    `add rule ${b} prerouting iifname @guarded meta protocol ip iifname . ip saddr != @portip counter drop`,
    `add rule ${b} prerouting iifname @guarded meta protocol arp iifname . arp saddr ip != @portip counter drop`,
    `add rule ${b} prerouting iifname @guarded meta protocol arp iifname . arp saddr ether != @portmac counter drop`,
    // IPv6 only from its own address (dual stack), or link-local and unspecified (neighbour discovery).
    `add rule ${b} prerouting iifname @guarded meta protocol ip6 iifname . ip6 saddr != @portip6 ip6 saddr != { ::, fe80::/10 } counter drop`,
    `add rule ${b} prerouting iifname @guarded meta protocol != { ip, arp, ip6 } counter drop`,
  ];
}

/** One element: `add` or `delete` of `ELEMENT` in the set or map `FAMILY TABLE SET`. */
interface Element {
  where: string;
  /** The key, as nft writes it. */
  key: string;
  /** A map element's value (needed to add it; a delete names the key only). */
  value?: string;
  /** ` comment "..."`, when it carries one. */
  comment?: string;
}

const q = (s: string): string => `"${s}"`;
const portKey = (p: PortMapping): string => `${p.hostIp ? `${p.hostIp} . ` : ''}${p.proto} . ${p.hostPort}`;

/** A container's published ports: `pub`/`dnat4` elements, or `pubip`/`dnat4ip` for a binding to one host address. */
function portElements(sid: string, ip: string, ports: PortMapping[], ip6?: string): Element[] {
  const t = `inet ${tableName(sid)}`;
  return ports.flatMap((p) => {
    const [set, map] = p.hostIp ? ['pubip', 'dnat4ip'] : ['pub', 'dnat4'];
    const out: Element[] = [{ where: `${t} ${set}`, key: portKey(p) }, { where: `${t} ${map}`, key: portKey(p), value: `${ip} . ${p.containerPort}` }];
    // Dual stack: a port not bound to an IPv4 host address answers over IPv6 too.
    if (ip6 && !p.hostIp) out.push({ where: `${t} dnat6`, key: portKey(p), value: `${ip6} . ${p.containerPort}` });
    return out;
  });
}

function networkElements(sid: string, n: { bridge: string; subnet?: string; subnet6?: string }): Element[] {
  const t = `inet ${tableName(sid)}`;
  return [
    ...(n.subnet ? [{ where: `${t} nets4`, key: n.subnet }] : []),
    ...(n.subnet6 ? [{ where: `${t} nets6`, key: n.subnet6 }] : []),
    { where: `${t} bridges`, key: q(n.bridge) },
  ];
}

/**
 * A container's elements: its port's guard entries and its published ports.
 * Its port's entry carries `<sid>:<id>` as a comment (plain ids, CNI's `cid/ifname`), so that a
 * state rebuilt from the kernel finds the id again.
 */
export function containerElements(sid: string, rec: ContainerRecord, allowSpoofing: boolean): Element[] {
  const b = `bridge ${tableName(sid)}`;
  const port = q(rec.hostVeth!);
  const out: Element[] = [{ where: `${b} ports`, key: port }];
  if (/^[A-Za-z0-9_.+/-]{1,100}$/.test(rec.id)) out[0]!.comment = ` comment ${q(`${sid}:${rec.id}`)}`;
  if (!allowSpoofing) {
    out.push({ where: `${b} guarded`, key: port }, { where: `${b} portmac`, key: `${port} . ${rec.mac}` }, { where: `${b} portip`, key: `${port} . ${rec.ip}` });
    if (rec.ip6) out.push({ where: `${b} portip6`, key: `${port} . ${rec.ip6}` });
  }
  return [...out, ...portElements(sid, rec.ip!, rec.ports, rec.ip6)];
}

/** `SET KEY`: an element as a listing of its set shows it. */
const setKey = (e: Element): string => `${e.where.split(' ').pop()} ${e.key}`;
const addLine = (e: Element): string => `add element ${e.where} { ${e.key}${e.comment ?? ''}${e.value ? ` : ${e.value}` : ''} }`;
/**
 * nft has no delete-if-present before 1.0.8: adding the element first (the
 * same key and value: a no-op when it is there) makes the delete always apply.
 */
const removeLines = (es: Element[]): string[] => [...es.map(addLine), ...es.map((e) => `delete element ${e.where} { ${e.key} }`)];

/**
 * The line `nft -e` prints once the kernel committed its transaction (the
 * kernel sends it only for a commit that changed something; a refused batch
 * is aborted whole and gets none).
 */
const COMMITTED = /^# new generation \d+ by process \d+ \(nft\)\n/m;

async function nft(lines: string[], allowFail = false): Promise<boolean> {
  if (lines.length === 0) return true;
  const text = lines.join('\n') + '\n';
  // A transaction that deletes leaves the kernel work to free what it
  // deleted after an RCU grace period, and the last close of the netlink
  // socket waits for it: 10-20 ms here, after the commit. In this process,
  // a detached holder keeps that socket (native.node); as a program, nft is
  // done when it says it committed (-e), not when it exits.
  const deletes = lines.some((l) => l.startsWith('delete '));
  const r = native().nftRun(text, deletes) ?? (await nftProgram(text, deletes));
  if (r.code === 0 || allowFail) return r.code === 0;
  // nft says `Error: WHY`, then the statement, then carets under the part it refused.
  const err = r.err.split('\n');
  const i = err.findIndex((l) => l.includes('Error: '));
  const why = i >= 0 ? `${err[i]!.slice(err[i]!.indexOf('Error: ') + 7)}: ${err[i + 1]?.trim() ?? ''}` : r.err.trim() || `exit ${r.code}`;
  throw new OcinetError('EEXEC', `nft: ${why}`);
}

/** The same through the nft program, where libnftables cannot be loaded. */
async function nftProgram(text: string, deletes: boolean): Promise<NftAnswer> {
  const r = await run('nft', deletes ? ['-e', '-f', '-'] : ['-f', '-'], { input: text, allowFail: true, ...(deletes ? { doneWhen: (out: string) => COMMITTED.test(out) } : {}) });
  return { code: r.code, out: r.stdout, err: r.stderr };
}

/** The state dir's tables as `nft -j` lists them, or none. */
async function listTables(sid: string): Promise<NftObject[]> {
  const out: NftObject[] = [];
  for (const family of ['inet', 'bridge']) {
    const r = await run('nft', ['-j', 'list', 'table', family, tableName(sid)], { allowFail: true });
    if (r.code === 0) out.push(...(JSON.parse(r.stdout) as { nftables: NftObject[] }).nftables);
  }
  return out;
}

/** What `nft -j` says of a set or map (the part read here). */
interface NftObject {
  set?: NftSet;
  map?: NftSet;
}
interface NftSet {
  family: string;
  name: string;
  table: string;
  elem?: unknown[];
}

/** An element of a listed set as nft's text form writes its key (and value), for a delete; its comment. */
function elementText(raw: unknown): { key: string; value?: string; comment?: string } {
  const text = (v: unknown): string => {
    if (typeof v === 'object' && v !== null && 'elem' in v) return text((v as { elem: { val: unknown } }).elem.val);
    if (typeof v === 'object' && v !== null && 'concat' in v) return (v as { concat: unknown[] }).concat.map(text).join(' . ');
    if (typeof v === 'object' && v !== null && 'prefix' in v) {
      const p = (v as { prefix: { addr: string; len: number } }).prefix;
      return `${p.addr}/${p.len}`;
    }
    return typeof v === 'string' && !/^[\d.:a-f]+$/.test(v) && !/^(tcp|udp)$/.test(v) ? q(v) : String(v);
  };
  const comment = (v: unknown): { comment?: string } => {
    const c = typeof v === 'object' && v !== null && 'elem' in v ? (v as { elem: { comment?: string } }).elem.comment : undefined;
    return c ? { comment: c } : {};
  };
  if (Array.isArray(raw)) return { key: text(raw[0]), value: text(raw[1]), ...comment(raw[0]) };
  return { key: text(raw), ...comment(raw) };
}

/** What the kernel holds of a state dir's nftables networks and containers (a damaged state's rebuild). */
export interface NftView {
  bridges: Set<string>;
  /** Container id by host port, from the port entry's comment. */
  idOfPort: Map<string, string>;
  /** Published ports by container address, from the DNAT map. */
  portsOfIp: Map<string, PortMapping[]>;
}

export async function nftView(sid: string): Promise<NftView> {
  const v: NftView = { bridges: new Set(), idOfPort: new Map(), portsOfIp: new Map() };
  const unq = (s: string): string => s.replace(/^"|"$/g, '');
  for (const o of await listTables(sid)) {
    const s = o.set ?? o.map;
    if (!s || s.table !== tableName(sid)) continue;
    for (const raw of s.elem ?? []) {
      const e = elementText(raw);
      if (s.family === 'inet' && s.name === 'bridges') v.bridges.add(unq(e.key));
      if (s.family === 'bridge' && s.name === 'ports' && e.comment?.startsWith(`${sid}:`)) v.idOfPort.set(unq(e.key), e.comment.slice(sid.length + 1));
      const k = /^(?:([\d.]+) \. )?(tcp|udp) \. (\d+)$/.exec(e.key);
      const d = /^([\d.]+) \. (\d+)$/.exec(e.value ?? '');
      if ((s.name === 'dnat4' || s.name === 'dnat4ip') && k && d && Boolean(k[1]) === (s.name === 'dnat4ip')) {
        const p: PortMapping = { proto: k[2] as 'tcp' | 'udp', hostPort: Number(k[3]), containerPort: Number(d[2]) };
        if (k[1]) p.hostIp = k[1];
        v.portsOfIp.set(d[1]!, [...(v.portsOfIp.get(d[1]!) ?? []), p]);
      }
    }
  }
  return v;
}

export const nftablesFirewall: Firewall = {
  backend: 'nftables',

  async installNetwork(n: NetworkRules, others: number) {
    const elements = networkElements(n.sid, n).map(addLine);
    // The tables exist while another network of this state dir does; else (or when flushed) they are made.
    if (others > 0 && (await nft(elements, true))) return;
    await nft([...skeleton(n.sid), ...elements]);
  },

  async removeNetwork(n, others) {
    if (others > 0) {
      if (!(await nft(removeLines(networkElements(n.sid, n)), true))) await purge(n.sid, (set, e) => set === 'bridges' && e.key === q(n.bridge));
      return;
    }
    const t = tableName(n.sid);
    await nft([`add table inet ${t}`, `delete table inet ${t}`, `add table bridge ${t}`, `delete table bridge ${t}`]);
  },

  async addContainer(sid, rec, _subnet, allowSpoofing) {
    await nft(containerElements(sid, rec, allowSpoofing).map(addLine));
  },

  async removeContainers(sid, recs) {
    // Both forms of a guard: what was added depends on --allow-spoofing, so remove as if it was not.
    const es = recs.flatMap((r) => (r.hostVeth && r.ip ? containerElements(sid, r, false) : []));
    if (await nft(removeLines(es), true)) return;
    // Some part is gone already (a flush, a half-made setup): delete what is there, by port and by address.
    const ports = new Set(recs.map((r) => q(r.hostVeth ?? '')));
    const ips = new Set(recs.flatMap((r) => [r.ip, r.ip6]).filter(Boolean));
    const keys = new Set(recs.flatMap((r) => r.ports.map(portKey)));
    await purge(sid, (set, e) => {
      if (set === 'dnat4' || set === 'dnat4ip' || set === 'dnat6') return ips.has(e.value?.split(' . ')[0]);
      if (set === 'pub' || set === 'pubip') return keys.has(e.key);
      return set !== 'nets4' && set !== 'bridges' && ports.has(e.key.split(' . ')[0]!);
    });
  },

  // Only the elements that changed, in one transaction: the ports that stay are never absent.
  async setPorts(sid, rec, before) {
    const key = (e: Element): string => `${e.where} ${e.key} ${e.value ?? ''}`;
    const was = portElements(sid, rec.ip!, before, rec.ip6);
    const now = portElements(sid, rec.ip!, rec.ports, rec.ip6);
    const gone = was.filter((e) => !now.some((n) => key(n) === key(e)));
    const come = now.filter((e) => !was.some((w) => key(w) === key(e)));
    await nft([...removeLines(gone), ...come.map(addLine)]);
  },

  // Adding an element that is there is a no-op: one transaction for all.
  async reapplyContainers(sid, recs) {
    await nft(recs.flatMap((r) => containerElements(sid, r, r.allowSpoofing === true)).map(addLine));
  },

  async networkPresent(n) {
    const r = await run('nft', ['list', 'table', 'inet', tableName(n.sid)], { allowFail: true });
    const b = await run('nft', ['list', 'table', 'bridge', tableName(n.sid)], { allowFail: true });
    return r.code === 0 && b.code === 0 && r.stdout.includes(q(n.bridge)) && /ip saddr @nets4 ip daddr != @nets4 masquerade/.test(r.stdout) && /iifname @guarded/.test(b.stdout);
  },

  async containerMissing(sid, rec) {
    if (!rec.hostVeth || !rec.ip) return [];
    const there = new Set<string>();
    for (const o of await listTables(sid)) {
      const s = o.set ?? o.map;
      if (s && s.table === tableName(sid)) for (const raw of s.elem ?? []) there.add(`${s.name} ${elementText(raw).key}`);
    }
    return containerElements(sid, rec, rec.allowSpoofing === true).map(setKey).filter((k) => !there.has(k)).map((k) => `nftables element ${k}`);
  },

  async purgeStale(sid, keep) {
    const kept = new Set(keep.flatMap((r) => (r.hostVeth && r.ip ? containerElements(sid, r, false) : [])).map(setKey));
    return purge(sid, (set, e) => set !== 'nets4' && set !== 'nets6' && set !== 'bridges' && !kept.has(`${set} ${e.key}`));
  },
};

/** Delete, by listing, the elements of this state dir's sets that `match`; says which went. */
async function purge(sid: string, match: (set: string, e: { key: string; value?: string }) => boolean): Promise<string[]> {
  const lines: string[] = [];
  for (const o of await listTables(sid)) {
    const s = o.set ?? o.map;
    if (!s || s.table !== tableName(sid)) continue;
    for (const raw of s.elem ?? []) {
      const e = elementText(raw);
      if (match(s.name, e)) lines.push(`delete element ${s.family} ${s.table} ${s.name} { ${e.key} }`);
    }
  }
  await nft(lines);
  return lines.map((l) => l.replace(/^delete element /, 'nft: '));
}
