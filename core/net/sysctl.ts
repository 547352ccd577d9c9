/** Per-namespace kernel switches, written through /proc/sys (only when they differ). */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { OcinetError } from '../base/errors.js';

export function setSysctl(key: string, value: string): void {
  const path = `/proc/sys/${key.replace(/\./g, '/')}`;
  try {
    if (readFileSync(path, 'utf8').trim() === value) return;
    writeFileSync(path, value);
  } catch (e) {
    throw new OcinetError('EKERNEL', `cannot set ${key}=${value}: ${(e as Error).message}`);
  }
}

/** A kernel booted with ipv6.disable=1 has no IPv6 to guard. */
const hasIPv6 = (): boolean => existsSync('/proc/sys/net/ipv6/conf');

/**
 * A network's bridge: forwarding on; 127.0.0.1 publishing needs that source
 * allowed on the bridge (the localhost guard in masquerade.ts drops the rest);
 * no router advertisements or autoconfiguration taken from containers. A
 * bridge ocinet made, for a network without IPv6, has no IPv6 at all.
 */
export function networkSysctls(bridge: string, ownBridge: boolean, dualStack = false): void {
  setSysctl('net.ipv4.ip_forward', '1');
  setSysctl(`net.ipv4.conf.${bridge}.route_localnet`, '1');
  if (!hasIPv6()) {
    if (dualStack) throw new OcinetError('EKERNEL', 'this kernel has no IPv6 (booted with ipv6.disable=1): --subnet6 cannot work');
    return;
  }
  setSysctl(`net.ipv6.conf.${bridge}.accept_ra`, '0');
  setSysctl(`net.ipv6.conf.${bridge}.autoconf`, '0');
  // Dual stack: the host is the containers' only IPv6 router.
  if (dualStack) {
    setSysctl(`net.ipv6.conf.${bridge}.disable_ipv6`, '0');
    setSysctl('net.ipv6.conf.all.forwarding', '1');
  } else if (ownBridge) setSysctl(`net.ipv6.conf.${bridge}.disable_ipv6`, '1');
}

/**
 * A host-side port (veth or TAP) on the bridge: the host speaks through the
 * bridge, never through a port, so the port takes no IPv6 of its own.
 */
export function portSysctls(port: string): void {
  if (!hasIPv6()) return;
  setSysctl(`net.ipv6.conf.${port}.accept_ra`, '0');
  setSysctl(`net.ipv6.conf.${port}.autoconf`, '0');
  setSysctl(`net.ipv6.conf.${port}.disable_ipv6`, '1');
}
