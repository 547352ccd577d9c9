/** Per-namespace kernel switches, written through /proc/sys (only when they differ). */
import { readFileSync, writeFileSync } from 'node:fs';
import { OcinetError } from './errors.js';

export function setSysctl(key: string, value: string): void {
  const path = `/proc/sys/${key.replace(/\./g, '/')}`;
  try {
    if (readFileSync(path, 'utf8').trim() === value) return;
    writeFileSync(path, value);
  } catch (e) {
    throw new OcinetError('EKERNEL', `cannot set ${key}=${value}: ${(e as Error).message}`);
  }
}

export function enableForwarding(bridge: string): void {
  setSysctl('net.ipv4.ip_forward', '1');
  // Published ports reached via 127.0.0.1 are DNATed out of the bridge: allow that source there.
  setSysctl(`net.ipv4.conf.${bridge}.route_localnet`, '1');
}
