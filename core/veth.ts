/**
 * The veth pair joining a container to the bridge. The peer is created
 * straight inside the container's namespace under its final name (one
 * netlink message), so a host interface is never renamed or moved.
 */
import { defaultRoute } from './route.js';

export interface VethPlan {
  hostVeth: string;
  iface: string;
  mtu: number;
  pid: number;
  bridge: string;
}

/** Host side: one `ip -batch`. */
export function hostLines(p: VethPlan): string[] {
  return [
    `link add ${p.hostVeth} mtu ${p.mtu} type veth peer name ${p.iface} mtu ${p.mtu} netns ${p.pid}`,
    `link set ${p.hostVeth} master ${p.bridge} up`,
    // Hairpin: a container reaching its own published port comes back through its own port.
    `link set ${p.hostVeth} type bridge_slave hairpin on`,
  ];
}

/** Container side: one `nsenter ... ip -batch`. */
export function containerLines(iface: string, ip: string, prefix: number, gateway: string): string[] {
  return [`link set lo up`, `addr add ${ip}/${prefix} dev ${iface}`, `link set ${iface} up`, defaultRoute(gateway, iface)];
}
