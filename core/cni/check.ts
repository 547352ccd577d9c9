/**
 * CHECK: is the attachment still what ADD made? The container's link,
 * address and default route (against the prevResult, which a later plugin
 * in the chain may have changed, e.g. tuning's MAC), the host port on its
 * bridge, the bridge's address, and the network's and the container's
 * rules. Says every difference it finds, in one line.
 */
import { ipv4Addresses, linkDetails } from '../net/bridge.js';
import { ipShowIn } from '../net/netns.js';
import { CniError, configError, type CniConfig, type CniEnv } from '../input/cni.js';
import { firewallOf } from '../firewall/backends.js';
import { isAlive } from '../sandbox/reclaim.js';
import { stateId } from '../state/names.js';
import { openCniNetns, recordOf } from './attach.js';
import { addressesOf, type CniInterface, type CniResult } from './result.js';

/** ocinet's own code for "CHECK found the attachment not as it was made". */
export const CHECK_FAILED = 110;

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

export async function cniCheck(cfg: CniConfig, env: CniEnv): Promise<void> {
  if (!cfg.prevResult) throw configError("'prevResult': CHECK needs the result of the attachment's ADD");
  const { rec, db } = recordOf(cfg, env);
  const net = db.networks[rec.bridge];
  const wrong: string[] = [];
  const prev = cfg.prevResult as Partial<CniResult>;
  const ifname = env.ifname!;
  // What ADD said, as the chain left it: the container interface and its addresses.
  const prevIfaces = Array.isArray(prev.interfaces) ? (prev.interfaces as CniInterface[]) : [];
  const mine = prevIfaces.findIndex((i) => i.name === ifname && i.sandbox);
  const mac = prevIfaces[mine]?.mac ?? rec.mac;
  const addrs = (Array.isArray(prev.ips) ? prev.ips : []).filter((i) => i.interface === undefined || i.interface === mine).map((i) => i.address);
  const want = addressesOf(rec, net);
  for (const a of want) if (!addrs.includes(a)) wrong.push(`prevResult does not hold ${a}, which ocinet gave ${ifname}`);

  const ns = openCniNetns(env.netns!);
  try {
    if (!isAlive(rec) || rec.netns !== ns.id) wrong.push(`${env.netns} is not the network namespace ocinet attached (${rec.nsPath ?? `process ${rec.pid}`})`);
    const inside = (await ipShowIn(ns.path, [`addr show dev ${ifname}`, 'route show default'])) + (rec.ip6 ? await ipShowIn(ns.path, ['route show default'], '-6') : '');
    const link = new RegExp(`^\\d+: ${esc(ifname)}[@:].*`, 'm').exec(inside)?.[0];
    if (!link) wrong.push(`${ifname} is missing in the container`);
    else {
      if (!/[<,]UP[,>]/.test(link)) wrong.push(`${ifname} is down`);
      if (mac && !inside.includes(`link/ether ${mac} `)) wrong.push(`${ifname}'s MAC is not ${mac}`);
      for (const a of want) if (!new RegExp(`inet6? ${esc(a)} `).test(inside)) wrong.push(`${ifname} lacks address ${a}`);
      if (net && !new RegExp(`^default via ${esc(net.gateway)} dev ${esc(ifname)}`, 'm').test(inside)) wrong.push(`no default route via ${net.gateway} on ${ifname}`);
      if (rec.ip6 && net?.gateway6 && !new RegExp(`^default via ${esc(net.gateway6)} dev ${esc(ifname)}`, 'm').test(inside)) wrong.push(`no IPv6 default route via ${net.gateway6} on ${ifname}`);
    }
  } finally {
    ns.close();
  }

  const port = await linkDetails(rec.hostVeth!);
  if (!port) wrong.push(`host link ${rec.hostVeth} is missing`);
  else if (port.master !== rec.bridge) wrong.push(`host link ${rec.hostVeth} is not on bridge ${rec.bridge}`);
  if (!net) wrong.push(`network ${rec.bridge} is missing from ocinet's state`);
  else {
    if (!(await ipv4Addresses(rec.bridge)).some((a) => a.startsWith(`${net.gateway}/`))) wrong.push(`bridge ${rec.bridge} lacks its gateway address ${net.gateway}`);
    const fw = firewallOf(rec.firewall);
    const sid = stateId(cfg.stateDir);
    if (!(await fw.networkPresent({ sid, bridge: net.bridge, subnet: net.subnet }))) wrong.push(`network ${net.bridge}'s ${fw.backend} rules are missing (ocinet reload)`);
    const missing = await fw.containerMissing(sid, rec);
    if (missing.length) wrong.push(`its own rules are missing: ${missing.join(', ')} (ocinet reload)`);
  }
  if (wrong.length) throw new CniError(CHECK_FAILED, `attachment ${rec.id} of network ${cfg.name}: ${wrong.join('; ')}`, 'ENOTFOUND');
}
