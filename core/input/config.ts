/**
 * What a hook run should do, from its flags (admin defaults in the hook
 * entry) and the container's annotations (per-container requests).
 * Precedence: io.ocinet.ip replaces --ip; io.ocinet.publish adds to --publish
 * (a host port asked twice is an error); everything else comes from flags.
 */
import { isIPv4, parseSubnet } from '../base/cidr.js';
import { isIPv6Address, parseSubnet6 } from '../base/cidr6.js';
import { OcinetError } from '../base/errors.js';
import { isIfName } from '../state/names.js';
import { parsePorts, parsePortList } from '../firewall/ports.js';
import { parseBackendChoice, type BackendChoice } from '../firewall/backends.js';
import type { NetworkOptions } from './request.js';
import { DEFAULT_STATE_DIR, type PortMapping } from '../state/store.js';
import { parseIfaces, parseRoutes, type IfaceInput, type RouteSpec } from './iface.js';
import { checkStateDir } from '../state/statedir.js';
import { parseJson } from '../base/validate.js';
import { parseRestore, type RestoreSet } from './ipvs-rules.js';
import { ANNOTATION_MAX_BYTES, checkPublishRange, DEFAULT_POLICY, MAX_ANNOTATION_ITEMS, parseRange, type AnnotationPolicy } from './policy.js';

export const DEFAULTS = {
  bridge: 'ocinet0',
  subnet: '10.213.0.0/16',
  iface: 'eth0',
  mtu: 1500,
};

export const ANNOTATIONS = {
  publish: 'io.ocinet.publish',
  ip: 'io.ocinet.ip',
  ip6: 'io.ocinet.ip6',
  interfaces: 'io.ocinet.interfaces',
  routes: 'io.ocinet.routes',
  ipvs: 'io.ocinet.ipvs',
  mode: 'io.ocinet.mode',
  qmp: 'io.ocinet.qmp',
  qga: 'io.ocinet.qga',
} as const;

export interface HookFlags {
  bridge?: string;
  subnet?: string;
  iface?: string;
  mtu?: string;
  publish?: string[];
  ip?: string;
  stateDir?: string;
  log?: string;
  keepBridge?: boolean;
  mode?: string;
  qmp?: string;
  qga?: string;
  allowHostDevice?: string[];
  annotationDevicePrefix?: string;
  allowVmSockets?: string[];
  publishRange?: string;
  allowSpoofing?: boolean;
  firewall?: string;
  subnet6?: string;
}

export interface HookConfig extends NetworkOptions {
  ports: PortMapping[];
  ip?: string;
  ip6?: string;
  logFile: string | null;
  requested: { ports: boolean; ip: boolean };
  interfaces: IfaceInput[];
  routes: RouteSpec[];
  mode: 'veth' | 'tap';
  vm?: { qmp?: string; qga?: string };
  /** IPVS rules from io.ocinet.ipvs, validated. */
  ipvs?: RestoreSet;
  /** What annotations may ask for, from the hook entry (the admin's). */
  policy: AnnotationPolicy;
  /** Which VM sockets an annotation named (checked against the policy before any connect). */
  vmAnnotated: { qmp: boolean; qga: boolean };
  /** --allow-spoofing (the admin's): containers may send from any MAC and address. */
  allowSpoofing: boolean;
  /** --firewall: the backend of a new network (a known one keeps its own). */
  firewall: BackendChoice;
}

function jsonAnnotation(annotations: Record<string, string>, key: string): unknown {
  const v = annotations[key];
  return v === undefined ? undefined : parseJson(v, `annotation ${key}`);
}

function ifName(v: string, what: string): string {
  if (!isIfName(v)) throw new OcinetError('EINPUT', `${what} '${v}' is not an interface name (a letter, then up to 14 letters, digits, _ . -)`);
  return v;
}

/** The state dir named by flag, env or default; not checked (`ocinet doctor` reports on it). */
export function stateDirFrom(flag: string | undefined, env: NodeJS.ProcessEnv): string {
  const dir = flag ?? env.OCINET_STATE_DIR ?? DEFAULT_STATE_DIR;
  if (!dir.startsWith('/')) throw new OcinetError('EINPUT', `--state-dir '${dir}' must be an absolute path`);
  return dir;
}

/**
 * The state dir, refused before anything (the log included) is written when
 * a non-root user could change it (statedir.ts). Read-only: it is created
 * under the lock, and a missing one only where root alone can create it.
 */
export function resolveStateDir(flag: string | undefined, env: NodeJS.ProcessEnv): string {
  const dir = stateDirFrom(flag, env);
  checkStateDir(dir);
  return dir;
}

function policyOf(flags: HookFlags): AnnotationPolicy {
  const p: AnnotationPolicy = { ...DEFAULT_POLICY };
  for (const g of flags.allowHostDevice ?? []) {
    if (!/^[A-Za-z0-9_.*-]{1,15}$/.test(g)) throw new OcinetError('EINPUT', `--allow-host-device '${g}' must be an interface name or a pattern with *`);
  }
  p.hostDevices = flags.allowHostDevice ?? [];
  if (flags.annotationDevicePrefix !== undefined) {
    if (!/^[A-Za-z]?[A-Za-z0-9_.-]{0,7}$/.test(flags.annotationDevicePrefix)) {
      throw new OcinetError('EINPUT', `--annotation-device-prefix '${flags.annotationDevicePrefix}' must be up to 8 characters of an interface name`);
    }
    p.devicePrefix = flags.annotationDevicePrefix;
  }
  for (const d of flags.allowVmSockets ?? []) {
    if (!d.startsWith('/') || d === '/' || /\s/.test(d)) throw new OcinetError('EINPUT', `--allow-vm-sockets '${d}' must be an absolute directory other than /`);
  }
  p.vmSocketDirs = flags.allowVmSockets ?? [];
  if (flags.publishRange !== undefined) p.publishRange = parseRange(flags.publishRange, '--publish-range');
  return p;
}

export function resolveConfig(flags: HookFlags, annotations: Record<string, string>, env: NodeJS.ProcessEnv): HookConfig {
  for (const [k, v] of Object.entries(annotations)) {
    if (!(Object.values(ANNOTATIONS) as string[]).includes(k)) {
      throw new OcinetError('EINPUT', `unknown annotation '${k}' (known: ${Object.values(ANNOTATIONS).join(', ')})`);
    }
    const max = ANNOTATION_MAX_BYTES[k]!;
    if (Buffer.byteLength(v) > max) throw new OcinetError('EINPUT', `annotation ${k} is ${Buffer.byteLength(v)} bytes, more than the ${max} allowed`);
  }
  const policy = policyOf(flags);
  const bridge = ifName(flags.bridge ?? DEFAULTS.bridge, '--bridge');
  const iface = ifName(flags.iface ?? DEFAULTS.iface, '--iface');
  const subnet = parseSubnet(flags.subnet ?? DEFAULTS.subnet, '--subnet').cidr;
  const mtuText = flags.mtu ?? String(DEFAULTS.mtu);
  if (!/^\d+$/.test(mtuText) || Number(mtuText) < 68 || Number(mtuText) > 65535) {
    throw new OcinetError('EINPUT', `--mtu '${mtuText}' must be a whole number from 68 to 65535`);
  }
  const asked = parsePortList(annotations[ANNOTATIONS.publish] ?? '', `annotation ${ANNOTATIONS.publish}`);
  if (asked.length > MAX_ANNOTATION_ITEMS.ports) throw new OcinetError('EINPUT', `annotation ${ANNOTATIONS.publish}: ${asked.length} ports, more than ${MAX_ANNOTATION_ITEMS.ports}`);
  // The hook entry's own --publish is the admin's: only the annotation's ports (each of a range) are held to the range.
  for (const p of asked) checkPublishRange(policy, p.hostPort, `annotation ${ANNOTATIONS.publish}`);
  const ports = [...(flags.publish ?? []).flatMap((p) => parsePorts(p, '--publish')), ...asked];
  const ip = annotations[ANNOTATIONS.ip] ?? flags.ip;
  if (ip !== undefined && !isIPv4(ip)) {
    const where = annotations[ANNOTATIONS.ip] !== undefined ? `annotation ${ANNOTATIONS.ip}` : '--ip';
    throw new OcinetError('EINPUT', `${where}: '${ip}' is not an IPv4 address`);
  }
  const stateDir = resolveStateDir(flags.stateDir, env);
  const logFile = flags.log === 'none' ? null : (flags.log ?? `${stateDir}/ocinet.log`);
  const ifs = jsonAnnotation(annotations, ANNOTATIONS.interfaces);
  if (Array.isArray(ifs) && ifs.length > MAX_ANNOTATION_ITEMS.interfaces) {
    throw new OcinetError('EINPUT', `annotation ${ANNOTATIONS.interfaces}: ${ifs.length} interfaces, more than ${MAX_ANNOTATION_ITEMS.interfaces}`);
  }
  const interfaces = ifs === undefined ? [] : parseIfaces(ifs, `annotation ${ANNOTATIONS.interfaces}`);
  const rts = jsonAnnotation(annotations, ANNOTATIONS.routes);
  if (rts !== undefined && !Array.isArray(rts)) throw new OcinetError('EINPUT', `annotation ${ANNOTATIONS.routes} must be a JSON array of routes`);
  if (Array.isArray(rts) && rts.length > MAX_ANNOTATION_ITEMS.routes) {
    throw new OcinetError('EINPUT', `annotation ${ANNOTATIONS.routes}: ${rts.length} routes, more than ${MAX_ANNOTATION_ITEMS.routes}`);
  }
  const routes = rts === undefined ? [] : parseRoutes(rts, true, `annotation ${ANNOTATIONS.routes}`);
  for (const i of interfaces) {
    if (i.name === iface) throw new OcinetError('EINPUT', `annotation ${ANNOTATIONS.interfaces}: name '${i.name}' is the container's main interface`);
  }
  const modeText = annotations[ANNOTATIONS.mode] ?? flags.mode ?? 'veth';
  if (modeText !== 'veth' && modeText !== 'tap') throw new OcinetError('EINPUT', `mode '${modeText}' must be veth or tap`);
  const vm: { qmp?: string; qga?: string } = {};
  for (const k of ['qmp', 'qga'] as const) {
    const v = annotations[ANNOTATIONS[k]] ?? flags[k];
    if (v === undefined) continue;
    if (!v.startsWith('/') || /\s/.test(v)) throw new OcinetError('EINPUT', `${k} socket '${v}' must be an absolute path without spaces`);
    vm[k] = v;
  }
  const requested = { ports: Boolean(annotations[ANNOTATIONS.publish]?.trim()), ip: annotations[ANNOTATIONS.ip] !== undefined };
  const vmAnnotated = { qmp: annotations[ANNOTATIONS.qmp] !== undefined, qga: annotations[ANNOTATIONS.qga] !== undefined };
  const cfg: HookConfig = {
    bridge, iface, subnet, mtu: Number(mtuText), ports, stateDir, logFile, keepBridge: Boolean(flags.keepBridge), requested, interfaces, routes,
    mode: modeText, policy, vmAnnotated, allowSpoofing: flags.allowSpoofing === true,
    firewall: parseBackendChoice(flags.firewall ?? 'auto', '--firewall'),
  };
  if (vm.qmp || vm.qga) cfg.vm = vm;
  const ipvs = annotations[ANNOTATIONS.ipvs];
  if (ipvs !== undefined) {
    cfg.ipvs = parseRestore(ipvs, `annotation ${ANNOTATIONS.ipvs}`);
  }
  if (ip !== undefined) cfg.ip = ip;
  // Dual stack: a v6 subnet of the hook entry's, and a static v6 address an annotation may ask for in it.
  if (flags.subnet6 !== undefined) {
    cfg.subnet6 = parseSubnet6(flags.subnet6, '--subnet6').cidr;
    if (cfg.firewall === 'iptables') throw new OcinetError('EINPUT', '--subnet6 needs the nftables firewall backend (--firewall nftables or auto)');
  }
  const ip6 = annotations[ANNOTATIONS.ip6];
  if (ip6 !== undefined) {
    if (!isIPv6Address(ip6)) throw new OcinetError('EINPUT', `annotation ${ANNOTATIONS.ip6}: '${ip6}' is not an IPv6 address`);
    if (!cfg.subnet6) throw new OcinetError('EINPUT', `annotation ${ANNOTATIONS.ip6}: the network has no IPv6 subnet (the hook entry gives none with --subnet6)`);
    cfg.ip6 = ip6;
  }
  return cfg;
}
