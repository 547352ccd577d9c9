/**
 * The CNI result of an attachment, in the form of the configuration's
 * version: 1.x (ips name their interface by index), 0.4.0 (and their IP
 * version). Built from the record, so a repeated ADD gets the same result.
 */
import { linkDetails } from '../net/bridge.js';
import { bridgeMac, hostVethMac, stateId } from '../state/names.js';
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

/** An attachment's addresses as `A/PREFIX`: IPv4, then IPv6 on a dual-stack network. */
export function addressesOf(rec: ContainerRecord, net: NetworkRecord | undefined): string[] {
  return [`${rec.ip}/${rec.prefix}`, ...(rec.ip6 && net?.subnet6 ? [`${rec.ip6}/${net.subnet6.split('/')[1]}`] : [])];
}

/**
 * The attachment's result. A plugin before ocinet in the chain (a
 * prevResult on ADD) keeps its part: ocinet's interfaces come after its own.
 */
export async function attachmentResult(cfg: CniConfig, rec: ContainerRecord, net: NetworkRecord, sandbox: string): Promise<CniResult> {
  // Both MACs are ocinet's own (pinned when made); only a bridge ocinet did not make is asked for.
  const bridgeMacNow = net.createdBridge ? bridgeMac(rec.bridge) : (await linkDetails(rec.bridge))?.address;
  const hostMac = hostVethMac(rec.id, stateId(cfg.stateDir));
  const prev = cfg.prevResult as Partial<CniResult> | undefined;
  const before = Array.isArray(prev?.interfaces) ? prev.interfaces : [];
  const at = before.length;
  const iface = (name: string, mac: string | undefined, ns?: string): CniInterface => ({ name, ...(mac ? { mac } : {}), ...(ns ? { sandbox: ns } : {}) });
  const old = cfg.cniVersion === '0.4.0';
  const [v4, v6] = addressesOf(rec, net);
  const ips: CniIp[] = [{ ...(old ? { version: '4' as const } : {}), address: v4!, gateway: net.gateway, interface: at + 2 }];
  const routes: CniResult['routes'] = [{ dst: '0.0.0.0/0', gw: net.gateway }];
  if (v6 && net.gateway6) {
    ips.push({ ...(old ? { version: '6' as const } : {}), address: v6, gateway: net.gateway6, interface: at + 2 });
    routes.push({ dst: '::/0', gw: net.gateway6 });
  }
  return {
    cniVersion: cfg.cniVersion,
    interfaces: [...before, iface(rec.bridge, bridgeMacNow), iface(rec.hostVeth!, hostMac), iface(rec.iface!, rec.mac, sandbox)],
    ips: [...(Array.isArray(prev?.ips) ? prev.ips : []), ...ips],
    routes: [...(Array.isArray(prev?.routes) ? prev.routes : []), ...routes],
    dns: cfg.dns ?? (prev?.dns && typeof prev.dns === 'object' ? prev.dns : {}),
  };
}
