/**
 * The CNI result of an attachment, in the form of the configuration's
 * version: 1.x (ips name their interface by index), 0.4.0 (and their IP
 * version). Built from the record, so a repeated ADD gets the same result.
 */
import { run } from '../base/exec.js';
import type { CniConfig, CniVersion } from '../input/cni.js';
import type { ContainerRecord, NetworkRecord } from '../state/store.js';

export interface CniInterface {
  name: string;
  mac?: string;
  sandbox?: string;
}

export interface CniIp {
  address: string;
  gateway?: string;
  interface?: number;
  /** 0.4.0 only. */
  version?: '4' | '6';
}

export interface CniResult {
  cniVersion: CniVersion;
  interfaces: CniInterface[];
  ips: CniIp[];
  routes: { dst: string; gw?: string }[];
  dns: Record<string, unknown>;
}

/** MACs of host links by name: one `ip -o -batch` for all of them. */
export async function linkMacs(names: string[]): Promise<Map<string, string>> {
  const r = await run('ip', ['-o', '-force', '-batch', '-'], { input: names.map((n) => `link show dev ${n}\n`).join(''), allowFail: true });
  const out = new Map<string, string>();
  for (const line of r.stdout.split('\n')) {
    const m = /^\d+: ([^:@\s]+)[:@].* link\/ether ([0-9a-f:]{17})/.exec(line);
    if (m) out.set(m[1]!, m[2]!);
  }
  return out;
}

/**
 * The attachment's result. A plugin before ocinet in the chain (a
 * prevResult on ADD) keeps its part: ocinet's interfaces come after its own.
 */
export async function attachmentResult(cfg: CniConfig, rec: ContainerRecord, net: Pick<NetworkRecord, 'gateway' | 'gateway6' | 'subnet6'>, sandbox: string): Promise<CniResult> {
  const macs = await linkMacs([rec.bridge, rec.hostVeth!]);
  const prev = cfg.prevResult as Partial<CniResult> | undefined;
  const before = Array.isArray(prev?.interfaces) ? prev.interfaces : [];
  const at = before.length;
  const iface = (name: string, mac: string | undefined, ns?: string): CniInterface => ({ name, ...(mac ? { mac } : {}), ...(ns ? { sandbox: ns } : {}) });
  const old = cfg.cniVersion === '0.4.0';
  const ips: CniIp[] = [{ ...(old ? { version: '4' as const } : {}), address: `${rec.ip}/${rec.prefix}`, gateway: net.gateway, interface: at + 2 }];
  const routes: CniResult['routes'] = [{ dst: '0.0.0.0/0', gw: net.gateway }];
  if (rec.ip6 && net.subnet6 && net.gateway6) {
    ips.push({ ...(old ? { version: '6' as const } : {}), address: `${rec.ip6}/${net.subnet6.split('/')[1]}`, gateway: net.gateway6, interface: at + 2 });
    routes.push({ dst: '::/0', gw: net.gateway6 });
  }
  return {
    cniVersion: cfg.cniVersion,
    interfaces: [...before, iface(rec.bridge, macs.get(rec.bridge)), iface(rec.hostVeth!, macs.get(rec.hostVeth!)), iface(rec.iface!, rec.mac, sandbox)],
    ips: [...(Array.isArray(prev?.ips) ? prev.ips : []), ...ips],
    routes: [...(Array.isArray(prev?.routes) ? prev.routes : []), ...routes],
    dns: cfg.dns ?? (prev?.dns && typeof prev.dns === 'object' ? prev.dns : {}),
  };
}
