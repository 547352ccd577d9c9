/**
 * The veth pair joining a container to the bridge. The peer is created
 * straight inside the container's namespace under its final name (one
 * netlink message), so a host interface is never renamed or moved. Both
 * sides are made over rtnetlink from the hook's own process (rtnl.ts).
 */
import { linkExists } from './bridge.js';
import { addAddress, defaultRoute, enslave, getLink, hairpin, linkIndex, newVeth, removeLink, talk, upByIndex, upByName, withSocket, type Step } from './rtnl.js';

export interface VethPlan {
  hostVeth: string;
  iface: string;
  /** The container side's MAC: ocinet's, so the port guard knows it without asking. */
  mac: string;
  /** The host side's MAC, ocinet's as well. */
  hostMac: string;
  mtu: number;
  /** The container's namespace, a descriptor opened once, never a pid. */
  nsFd: number;
  bridge: string;
}

const bridgeIndex = (fd: number, bridge: string): number => linkIndex(talk(fd, [getLink(bridge)])[0]!, bridge);

// Hairpin: a container reaching its own published port comes back through its own port.
const hairpinStep = (name: string): Step => ({ what: `hairpin on ${name}`, msg: hairpin(name) });

/**
 * The pair, its host side up on the bridge with hairpin on. When the pair
 * could not be made, nothing was (a link of that name is not touched); when
 * a later step failed, the pair it made is removed again.
 */
export function makeVeth(p: VethPlan): void {
  withSocket(-1, (fd) => {
    const master = bridgeIndex(fd, p.bridge);
    const veth = newVeth({ name: p.hostVeth, mac: p.hostMac, mtu: p.mtu, master, peer: p.iface, peerMac: p.mac, nsFd: p.nsFd });
    talk(fd, [{ what: `creating veth ${p.hostVeth} on ${p.bridge} (peer ${p.iface} in the container)`, msg: veth }]);
    try {
      talk(fd, [hairpinStep(p.hostVeth)]);
    } catch (e) {
      removeLink(p.hostVeth);
      throw e;
    }
  });
}

export interface InsideAddress {
  ip: string;
  prefix: number;
  gateway: string;
}

/** The container's side: loopback up, its addresses, its link up, a default route per family. */
export function configureInside(nsFd: number, iface: string, addrs: InsideAddress[]): void {
  withSocket(nsFd, (fd) => {
    const [, link] = talk(fd, [{ what: 'loopback up in the container', msg: upByName('lo') }, getLink(iface)]);
    const index = linkIndex(link!, iface);
    talk(fd, [
      ...addrs.map((a) => ({ what: `address ${a.ip}/${a.prefix} on ${iface} in the container`, msg: addAddress(index, a) })),
      { what: `${iface} up in the container`, msg: upByIndex(index) },
      ...addrs.map((a) => ({ what: `default route via ${a.gateway} in the container`, msg: defaultRoute(index, a.gateway) })),
    ]);
  });
}

/**
 * Running containers' host ends onto their bridge again, after it was made
 * anew: up, hairpin on. One that went meanwhile is skipped; any other
 * refusal fails the setup with its reason.
 */
export function reattachVeths(hostVeths: string[], bridge: string): void {
  if (hostVeths.length === 0) return;
  withSocket(-1, (fd) => {
    const master = bridgeIndex(fd, bridge);
    for (const name of hostVeths) {
      try {
        talk(fd, [{ what: `${name} onto bridge ${bridge}`, msg: enslave(name, master) }, hairpinStep(name)]);
      } catch (e) {
        if (linkExists(name)) throw e;
      }
    }
  });
}
