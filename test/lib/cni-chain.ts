/**
 * CNI for the real-client tests (test/lib/containerd.ts, podman's CNI
 * backend): a conflist of either plugin chain, a plugin directory holding the
 * plugins it names, and a log of every call each client made.
 *
 * Switching a test from Debian's plugins to ocinet's is `conflist('ocinet',
 * net)` instead of `conflist('debian', net)` (and `installPlugins` with the
 * same kind): both chains end with Debian's `tuning`, which passes the
 * previous result on, so chaining (prevResult) is exercised either way.
 *
 * `installPlugins(dir, kind, log)` puts, for each plugin type, a small Node
 * script (no shell) in `dir` that appends one JSON line to `log` (the CNI_*
 * environment, the config on stdin, the exit code, stdout and stderr) and
 * runs the real plugin with the same stdin and environment. Without `log`,
 * symlinks to the real plugins.
 */
import { chmodSync, existsSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { privateDir, ROOT } from './env.js';

export type PluginKind = 'debian' | 'ocinet';

/** Debian's containernetworking-plugins. */
export const DEBIAN_PLUGINS = '/usr/lib/cni';
/** ocinet's CNI plugin (type `ocinet`), as `make build` bundles it. */
export const OCINET_CNI = join(ROOT, 'dist/bin/ocinet-cni');
/**
 * The CNI version the conflists say. containerd 1.6's ctr and podman 4.3
 * refuse a result whose cniVersion is 1.1.0 ("unsupported CNI result
 * version"), and Debian's plugins 1.1.1 know up to 1.0.0: a CNI 1.1 plugin
 * must take 1.0.0 configs and answer in 1.0.0 to work with them.
 */
export const CNI_VERSION = '1.0.0';

export interface NetworkOptions {
  /** The conflist's `name` (what `podman run --network` names). */
  name: string;
  bridge: string;
  /** IPv4 CIDR; the gateway is its first address, on the bridge. */
  subnet: string;
  /** host-local's `dataDir` (leases) or ocinet's `stateDir`: keep it under the test's temp dir. */
  stateDir: string;
  mtu?: number;
  /** ocinet's `firewall` (`auto`, `nftables`, `iptables`); Debian's chain ignores it. */
  firewall?: string;
  cniVersion?: string;
}

export interface PluginConf {
  type: string;
  [key: string]: unknown;
}

export interface ConfList {
  cniVersion: string;
  name: string;
  plugins: PluginConf[];
}

/** A sysctl that `tuning`, last in both chains, sets inside the container (0 by default): the proof it ran. */
export const TUNING_SYSCTL = { key: 'net.ipv4.conf.eth0.arp_notify', value: '1' };

/**
 * The network as a conflist. `debian`: bridge (gateway on the bridge,
 * masquerade, hairpin) with host-local, then portmap. `ocinet`: the ocinet
 * plugin alone does all three. Both: `tuning` last, and the
 * `portMappings` capability on the plugin that publishes ports.
 */
export function conflist(kind: PluginKind, o: NetworkOptions): ConfList {
  const tuning: PluginConf = { type: 'tuning', sysctl: { [TUNING_SYSCTL.key]: TUNING_SYSCTL.value } };
  const mtu = o.mtu ?? 1500;
  const plugins: PluginConf[] =
    kind === 'debian'
      ? [
          {
            type: 'bridge', bridge: o.bridge, isGateway: true, ipMasq: true, hairpinMode: true, mtu,
            ipam: { type: 'host-local', ranges: [[{ subnet: o.subnet }]], routes: [{ dst: '0.0.0.0/0' }], dataDir: o.stateDir },
          },
          { type: 'portmap', capabilities: { portMappings: true } },
          tuning,
        ]
      : [
          {
            type: 'ocinet', bridge: o.bridge, subnet: o.subnet, mtu, ipMasq: true, stateDir: o.stateDir,
            ...(o.firewall ? { firewall: o.firewall } : {}), capabilities: { portMappings: true },
          },
          tuning,
        ];
  return { cniVersion: o.cniVersion ?? CNI_VERSION, name: o.name, plugins };
}

/** Where each plugin type of a chain lives (IPAM plugins included: bridge finds host-local through CNI_PATH). */
export function pluginBinaries(kind: PluginKind, ocinet = OCINET_CNI): Record<string, string> {
  const debian = (t: string): [string, string] => [t, join(DEBIAN_PLUGINS, t)];
  return Object.fromEntries(
    kind === 'debian'
      ? [debian('bridge'), debian('host-local'), debian('portmap'), debian('tuning')]
      : [['ocinet', ocinet], debian('tuning')],
  );
}

/** Write `list` as `dir/NN-NAME.conflist` (clients take the first file in sorted order). */
export function writeConflist(dir: string, list: ConfList, order = 10): string {
  const file = join(dir, `${order}-${list.name}.conflist`);
  writeFileSync(file, JSON.stringify(list, null, 2) + '\n');
  return file;
}

/** The logging stand-in for plugin `type` (a CommonJS script run by this Node; no shell). */
function wrapper(type: string, real: string, log: string): string {
  return `#!${process.execPath}
'use strict';
// ocinet test harness: log this CNI call, then run the real plugin.
const fs = require('fs');
const { spawnSync } = require('child_process');
const input = fs.readFileSync(0);
const start = process.hrtime.bigint();
const r = spawnSync(${JSON.stringify(real)}, [], { input, env: process.env, maxBuffer: 16 << 20 });
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('CNI_')));
const json = (b) => { const s = String(b || ''); try { return JSON.parse(s); } catch { return s; } };
const ms = Number(process.hrtime.bigint() - start) / 1e6;
const netnsAlive = env.CNI_NETNS ? fs.existsSync(env.CNI_NETNS) : null;
const line = { plugin: ${JSON.stringify(type)}, env, netnsAlive, config: json(input), code: r.status === null ? -1 : r.status, stdout: json(r.stdout), stderr: String(r.stderr || ''), ms };
fs.appendFileSync(${JSON.stringify(log)}, JSON.stringify(line) + '\\n');
if (r.stdout) process.stdout.write(r.stdout);
if (r.stderr) process.stderr.write(r.stderr);
process.exitCode = r.status === null ? 1 : r.status;
`;
}

/**
 * Fill plugin directory `dir` for `kind`: logging stand-ins when `log` is
 * given, else symlinks. `ocinet`: the plugin to run (e.g. as `make install` put it).
 */
export function installPlugins(dir: string, kind: PluginKind, log?: string, ocinet = OCINET_CNI): void {
  for (const [type, real] of Object.entries(pluginBinaries(kind, ocinet))) {
    if (!existsSync(real)) throw new Error(`CNI plugin ${type}: ${real} is missing (make build?)`);
    const file = join(dir, type);
    if (log) {
      writeFileSync(file, wrapper(type, real, log));
      chmodSync(file, 0o755);
    } else symlinkSync(real, file);
  }
}

/** One logged plugin call. */
export interface CniCall {
  plugin: string;
  /** The CNI_* variables: CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH. */
  env: Record<string, string>;
  /** Whether CNI_NETNS named an existing path when the plugin was called (null: CNI_NETNS was empty). */
  netnsAlive: boolean | null;
  /** The config on stdin (parsed; a string when it was not JSON). */
  config: Record<string, unknown> | string;
  code: number;
  stdout: unknown;
  stderr: string;
  /** How long the real plugin took (its IPAM plugin included), ms. */
  ms: number;
}

export function readCalls(log: string): CniCall[] {
  if (!existsSync(log)) return [];
  return readFileSync(log, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as CniCall);
}

/** A call as one line for a test's comments: `ADD bridge default-c1 netns=/proc/1/ns/net eth0 cniVersion=1.0.0 -> 0`. */
export function describeCall(c: CniCall): string {
  const v = typeof c.config === 'object' ? String(c.config.cniVersion) : '?';
  const prev = typeof c.config === 'object' && 'prevResult' in c.config ? ' prevResult' : '';
  const rc = typeof c.config === 'object' && 'runtimeConfig' in c.config ? ` runtimeConfig=${JSON.stringify(c.config.runtimeConfig)}` : '';
  return `${c.env.CNI_COMMAND} ${c.plugin} id=${c.env.CNI_CONTAINERID ?? ''} netns=${JSON.stringify(c.env.CNI_NETNS ?? '')}${c.netnsAlive === false ? ' (missing)' : ''} ifname=${c.env.CNI_IFNAME ?? ''} args=${JSON.stringify(c.env.CNI_ARGS ?? '')} cniVersion=${v}${prev}${rc} -> ${c.code} (${Math.round(c.ms)} ms)`;
}

/** libcni's result cache (both clients' libcni writes `/var/lib/cni/results/NET-ID-IFNAME`). */
export const CNI_CACHE = '/var/lib/cni';

/** Make libcni's cache private to the test's mount namespace (it does not exist on this machine: an overlay, see `privateDir`). */
export function privateCniCache(): Promise<void> {
  return privateDir(CNI_CACHE);
}
