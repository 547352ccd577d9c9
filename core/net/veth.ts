/**
 * The veth pair joining a container to the bridge. The peer is created
 * straight inside the container's namespace under its final name (one
 * netlink message), so a host interface is never renamed or moved.
 */
import { defaultRoute } from './route.js';

export interface VethPlan {
  hostVeth: string;
  iface: string;
  /** The container side's MAC: ocinet's, so the port guard knows it without asking. */
  mac: string;
  /** The host side's MAC, ocinet's as well. */
  hostMac: string;
  mtu: number;
  /** The container's namespace as a path (`/proc/self/fd/N`, opened once), never a pid. */
  netns: string;
  bridge: string;
}

/** Host side: one `ip -batch`. */
export function hostLines(p: VethPlan): string[] {
  return [
    `link add ${p.hostVeth} address ${p.hostMac} mtu ${p.mtu} type veth peer name ${p.iface} address ${p.mac} mtu ${p.mtu} netns ${p.netns}`,
    ...reattachLines(p.hostVeth, p.bridge),
  ];
}

/** Attach a host veth to the bridge (again, after the bridge was made anew). */
export function reattachLines(hostVeth: string, bridge: string): string[] {
  return [
    `link set ${hostVeth} master ${bridge} up`,
    // Hairpin: a container reaching its own published port comes back through its own port.
    `link set ${hostVeth} type bridge_slave hairpin on`,
  ];
}

/** Container side: one `nsenter ... ip -batch`. */
export function containerLines(iface: string, ip: string, prefix: number, gateway: string, v6?: { ip: string; prefix: number; gateway: string }): string[] {
  // IPv6 without duplicate address detection: ocinet's IPAM made it unique, and it is usable at once.
  const six = v6 ? [`addr add ${v6.ip}/${v6.prefix} dev ${iface} nodad`] : [];
  return [`link set lo up`, `addr add ${ip}/${prefix} dev ${iface}`, ...six, `link set ${iface} up`, defaultRoute(gateway, iface), ...(v6 ? [defaultRoute(v6.gateway, iface)] : [])];
}
