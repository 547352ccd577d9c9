/**
 * The state file as the locked phases read it, and its rebuild when it is
 * damaged beyond reading (truncated, not JSON, not ocinet's). The damaged
 * file is kept aside and a new state is made from what the kernel shows:
 * ocinet's bridges (their address gives the subnet), the host veths `ocv…`
 * paired with the namespace holding their peer (address, a process in it),
 * and the ports chains tagged with container ids. A veth whose id no tag
 * names gets a stand-in id; teardown of the real id still finds it by its
 * veth name. Nothing is deleted here: what no rebuilt record owns is left to
 * gc's orphan pass.
 */
import { readdirSync, readFileSync, renameSync } from 'node:fs';
import { aliasOwner, bridgeAlias, type LinkDetails } from '../net/bridge.js';
import { intToIp, ipToInt, maskOf } from '../base/cidr.js';
import { bigToIp6, ip6ToBig } from '../base/cidr6.js';
import { errorLine, isOcinetError } from '../base/errors.js';
import { hasProgram, run } from '../base/exec.js';
import { save, savedWords } from '../firewall/iptables/tables.js';
import { nftView, type NftView } from '../firewall/nftables/backend.js';
import type { OpLog } from '../state/log.js';
import { DNAT_CHAIN_PREFIX, guardChain, hostVethName, stateId } from '../state/names.js';
import { netnsId } from '../net/netns.js';
import { startTime } from '../base/proc.js';
import { dbPath, emptyDb, loadDb, saveDb, type ContainerRecord, type Db, type PortMapping } from '../state/store.js';

/**
 * Read the state for a change (the caller holds the lock): damaged records
 * are repaired and said once; a damaged file is rebuilt from the kernel.
 */
export async function loadForChange(stateDir: string, log?: OpLog): Promise<Db> {
  const warnings: string[] = [];
  try {
    const db = loadDb(stateDir, warnings);
    if (warnings.length) {
      for (const w of warnings) log?.warn(w);
      saveDb(stateDir, db); // the repaired form, so each is said once
    }
    return db;
  } catch (e) {
    if (!isOcinetError(e) || e.code !== 'EDAMAGED') throw e;
    const { db, summary } = await rebuildState(stateDir, errorLine(e));
    log?.warn(summary);
    return db;
  }
}

interface IpLink extends LinkDetails {
  ifindex: number;
  link_index?: number;
  addr_info?: { family: string; local: string; prefixlen: number }[];
}

async function ipJson(args: string[], nsPath?: string): Promise<IpLink[]> {
  const r = nsPath ? await run('nsenter', [`--net=${nsPath}`, '--', 'ip', '-j', ...args], { allowFail: true }) : await run('ip', ['-j', ...args]);
  if (r.code !== 0) return [];
  return JSON.parse(r.stdout || '[]') as IpLink[];
}

interface TaggedPorts {
  chain: string;
  /** The tag as the comment has it (`<sid>:<id>`, or a bare id from the previous version). */
  tag: string;
  /** The host veth name the id has under that tag's naming. */
  veth: string;
  ip: string;
  ports: PortMapping[];
}

/**
 * Ports chains by container id, from their DNAT rules' comments (parsed as
 * words, compared whole): this state dir's tags, and the previous version's
 * untagged ones (kept only when their container's veth is found on our bridge).
 */
async function portsByTag(sid: string): Promise<Map<string, TaggedPorts>> {
  const out = new Map<string, TaggedPorts>();
  for (const line of (await save('nat')).rules) {
    const w = savedWords(line);
    const at = (flag: string): string | undefined => {
      const i = w.indexOf(flag);
      return i >= 0 ? w[i + 1] : undefined;
    };
    const chain = w[1] ?? '';
    const proto = at('-p');
    const hostPort = at('--dport');
    const comment = at('--comment');
    const dest = /^([\d.]+):(\d+)$/.exec(at('--to-destination') ?? '');
    if (!chain.startsWith(DNAT_CHAIN_PREFIX) || at('-j') !== 'DNAT' || (proto !== 'tcp' && proto !== 'udp') || !hostPort || !dest || !comment?.startsWith('ocinet:')) continue;
    const tag = comment.slice('ocinet:'.length);
    const m = /^([0-9a-f]{8}):(.+)$/.exec(tag);
    if (m && m[1] !== sid) continue; // another state dir's
    const id = m ? m[2]! : tag;
    const e = out.get(id) ?? { chain, tag, veth: m ? hostVethName(id, sid) : hostVethName(id), ip: dest[1]!, ports: [] };
    const p: PortMapping = { hostPort: Number(hostPort), containerPort: Number(dest[2]), proto };
    const hostIp = /^([\d.]+)(?:\/32)?$/.exec(at('-d') ?? '')?.[1];
    if (hostIp) p.hostIp = hostIp;
    e.ports.push(p);
    out.set(id, e);
  }
  return out;
}

/** A link's global IPv6 address (not link-local), if any. */
const global6 = (l: IpLink): { local: string; prefixlen: number } | undefined => l.addr_info?.find((x) => x.family === 'inet6' && !x.local.startsWith('fe80:'));

/** One process per network namespace other than ours: the lowest pid in it. */
function namespaces(): Map<string, number> {
  const self = netnsId('/proc/self/ns/net');
  const seen = new Map<string, number>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const id = netnsId(`/proc/${d}/ns/net`);
    if (id && id !== self && !seen.has(id)) seen.set(id, Number(d));
  }
  return seen;
}

/** The namespace's default gateway (from /proc/PID/net/route, no exec), or null. */
function defaultGateway(pid: number): string | null {
  try {
    for (const line of readFileSync(`/proc/${pid}/net/route`, 'utf8').split('\n').slice(1)) {
      const f = line.split('\t');
      if (f[1] === '00000000' && f[2] && f[2] !== '00000000') {
        const n = parseInt(f[2], 16); // little-endian
        return [n & 255, (n >>> 8) & 255, (n >>> 16) & 255, n >>> 24].join('.');
      }
    }
  } catch {
    /* gone */
  }
  return null;
}

export async function rebuildState(stateDir: string, why: string): Promise<{ db: Db; summary: string }> {
  const db = emptyDb();
  const sid = stateId(stateDir);
  const links = await ipJson(['-d', 'addr', 'show']);
  // Another state dir's bridges (their alias names it) and what is on them are not ours to take.
  const foreign = new Set(links.filter((l) => aliasOwner(l.ifalias) !== undefined && aliasOwner(l.ifalias) !== sid).map((l) => l.ifname));
  const vethOf = new Map(links.filter((l) => /^ocv[0-9a-f]{10}$/.test(l.ifname) && !(l.master && foreign.has(l.master))).map((l) => [l.ifindex, l]));
  const bridges = new Set([...vethOf.values()].map((l) => l.master).filter((m): m is string => Boolean(m)));
  for (const l of links) if (l.linkinfo?.info_kind === 'bridge' && l.ifalias === bridgeAlias(sid)) bridges.add(l.ifname);
  const gateways = new Map<string, string>();
  // The nftables backend's networks and containers: its sets name bridges and ports, its DNAT map the ports.
  const nft: NftView = hasProgram('nft') ? await nftView(sid) : { bridges: new Set(), idOfPort: new Map(), portsOfIp: new Map() };
  for (const b of bridges) {
    const l = links.find((x) => x.ifname === b);
    const a = l?.addr_info?.find((x) => x.family === 'inet');
    if (!l || !a) continue;
    const subnet = `${intToIp((ipToInt(a.local) & maskOf(a.prefixlen)) >>> 0)}/${a.prefixlen}`;
    db.networks[b] = { bridge: b, subnet, gateway: a.local, createdBridge: l.ifalias === bridgeAlias(sid), firewall: nft.bridges.has(b) ? 'nftables' : 'iptables' };
    // Dual stack: the bridge's global IPv6 address is the gateway of the network's IPv6 subnet.
    const a6 = global6(l);
    if (a6) {
      const host = (1n << BigInt(128 - a6.prefixlen)) - 1n;
      Object.assign(db.networks[b]!, { subnet6: `${bigToIp6(ip6ToBig(a6.local) & ~host)}/${a6.prefixlen}`, gateway6: a6.local });
    }
    gateways.set(a.local, b);
  }
  const tagged = await portsByTag(sid);
  const idOfVeth = new Map([...tagged].map(([id, e]) => [e.veth, id]));
  // Only namespaces routed through one of our bridges are entered (one exec each).
  for (const [nsId, pid] of namespaces()) {
    const gw = defaultGateway(pid);
    if (!gw || !gateways.has(gw)) continue;
    const start = startTime(pid);
    const nsPath = `/proc/${pid}/ns/net`;
    for (const inner of await ipJson(['-d', 'addr', 'show'], nsPath)) {
      const host = inner.link_index !== undefined ? vethOf.get(inner.link_index) : undefined;
      if (!host || host.link_index !== inner.ifindex || !host.master) continue;
      const a = inner.addr_info?.find((x) => x.family === 'inet');
      const onNft = db.networks[host.master]?.firewall === 'nftables';
      const id = (onNft ? nft.idOfPort.get(host.ifname) : idOfVeth.get(host.ifname)) ?? `recovered-${host.ifname}`;
      const ports = onNft ? undefined : tagged.get(id);
      const r: ContainerRecord = {
        id, mode: 'veth', bridge: host.master, iface: inner.ifname, hostVeth: host.ifname, mtu: host.mtu,
        ports: ports?.ports ?? (a && nft.portsOfIp.get(a.local)) ?? [], pid, netns: nsId, createdAt: new Date().toISOString(), setupPid: 0, recovered: true,
        firewall: onNft ? 'nftables' : 'iptables',
      };
      // An iptables guard's name follows from its port's; removal looks for it by listing when it is not there.
      if (!onNft) r.guard = guardChain(sid, host.ifname);
      if (inner.address) r.mac = inner.address;
      const a6 = global6(inner);
      if (a6 && db.networks[host.master]?.subnet6) r.ip6 = a6.local;
      if (start !== null) r.start = start;
      if (a) {
        r.ip = a.local;
        r.prefix = a.prefixlen;
      }
      if (ports) {
        r.chain = ports.chain;
        r.tag = ports.tag;
      }
      db.containers[id] = r;
      vethOf.delete(inner.link_index!);
    }
  }
  // Only once the new state is made: a rebuild that fails leaves the damaged file (and says why),
  // never an empty state that would make gc take live containers' veths for orphans.
  const aside = `${dbPath(stateDir)}.damaged-${Date.now()}`;
  renameSync(dbPath(stateDir), aside);
  saveDb(stateDir, db);
  const n = Object.keys(db.containers).length;
  const summary = `${why}; moved it to ${aside} and rebuilt the state from the kernel: ${n} container${n === 1 ? '' : 's'}, ${bridges.size} bridge${bridges.size === 1 ? '' : 's'}`;
  return { db, summary };
}
