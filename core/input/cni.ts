/**
 * What a CNI runtime asks ocinet-cni for: the CNI_* environment and the
 * network configuration on stdin (CNI spec 1.1), validated in the spec's
 * order (decoding, version, configuration) so that each failure gets its
 * spec error code. The runtime and the admin's conflist write these; the
 * port mappings come from the pod or container spec (the user's) and are
 * held to the configuration's publishRange.
 */
import { isIPv4, parseSubnet } from '../base/cidr.js';
import { isIPv6Address, parseSubnet6 } from '../base/cidr6.js';
import { OcinetError, type ErrorCode } from '../base/errors.js';
import { check } from '../base/validate.js';
import { validateCniConfig } from '../generated/validators.js';
import { parseBackendChoice, type BackendChoice } from '../firewall/backends.js';
import { isCniContainerId, isIfName } from '../state/names.js';
import { DEFAULT_STATE_DIR, type PortMapping } from '../state/store.js';
import { DEFAULTS, resolveStateDir, stateDirFrom } from './config.js';
import { DEFAULT_POLICY, parseRange } from './policy.js';

/** The spec versions ocinet-cni speaks, oldest first (VERSION lists them). */
export const CNI_VERSIONS = ['0.4.0', '1.0.0', '1.1.0'] as const;
export type CniVersion = (typeof CNI_VERSIONS)[number];

export const CNI_COMMANDS = ['ADD', 'DEL', 'CHECK', 'VERSION', 'GC', 'STATUS'] as const;
export type CniCommand = (typeof CNI_COMMANDS)[number];

/** The spec's well-known error codes ocinet-cni gives (100 and up are ocinet's own, docs/cni.md). */
export const CNI_CODE = {
  incompatibleVersion: 1,
  unknownContainer: 3,
  invalidEnvironment: 4,
  ioFailure: 5,
  decodingFailure: 6,
  invalidConfig: 7,
  tryAgainLater: 11,
  notAvailable: 50,
  limitedConnectivity: 51,
} as const;

export interface CniEnv {
  command: CniCommand;
  containerId?: string;
  netns?: string;
  ifname?: string;
  /** CNI_ARGS' pairs. */
  args: Record<string, string>;
}

/** An error that knows its CNI code (the plugin turns every error into the spec's error JSON). */
export class CniError extends OcinetError {
  constructor(
    readonly cniCode: number,
    message: string,
    code: ErrorCode = 'EINPUT',
  ) {
    super(code, message);
  }
}

/** CNI_ARGS keys ocinet-cni reads or knows runtimes send (kubelet, podman, containerd). */
const KNOWN_ARGS = new Set(['IgnoreUnknown', 'IP', 'K8S_POD_NAMESPACE', 'K8S_POD_NAME', 'K8S_POD_INFRA_CONTAINER_ID', 'K8S_POD_UID']);

const envError = (msg: string): CniError => new CniError(CNI_CODE.invalidEnvironment, msg);

/** The CNI_* variables a command needs, each checked; what it does not need is not read. */
export function parseCniEnv(env: NodeJS.ProcessEnv): CniEnv {
  const command = env.CNI_COMMAND;
  if (!command) throw envError('CNI_COMMAND is not set (ADD, DEL, CHECK, VERSION, GC or STATUS)');
  if (!(CNI_COMMANDS as readonly string[]).includes(command)) throw envError(`CNI_COMMAND '${command.slice(0, 32)}' is not one of ${CNI_COMMANDS.join(', ')}`);
  const out: CniEnv = { command: command as CniCommand, args: {} };
  if (command !== 'ADD' && command !== 'DEL' && command !== 'CHECK') return out;

  const id = env.CNI_CONTAINERID ?? '';
  if (!isCniContainerId(id)) throw envError(`CNI_CONTAINERID '${id.slice(0, 64)}' must be an alphanumeric, then letters, digits, _ . - (up to 1024)`);
  out.containerId = id;
  const ifname = env.CNI_IFNAME ?? '';
  if (!isIfName(ifname)) throw envError(`CNI_IFNAME '${ifname.slice(0, 32)}' is not an interface name (a letter, then up to 14 letters, digits, _ . -)`);
  out.ifname = ifname;
  const netns = env.CNI_NETNS ?? '';
  if (netns !== '') {
    if (!netns.startsWith('/') || /\s/.test(netns) || netns.length > 4096) throw envError(`CNI_NETNS '${netns.slice(0, 64)}' must be an absolute path without spaces`);
    out.netns = netns;
  } else if (command !== 'DEL') {
    throw envError(`CNI_NETNS is required for ${command}`); // DEL may come after the namespace is gone
  }
  out.args = parseCniArgs(env.CNI_ARGS ?? '');
  return out;
}

/** `K=V;K=V`: the pairs, refusing keys nobody knows unless IgnoreUnknown is set (the spec's convention). */
export function parseCniArgs(text: string): Record<string, string> {
  const args: Record<string, string> = Object.create(null) as Record<string, string>;
  if (text === '') return args;
  if (text.length > 4096) throw envError(`CNI_ARGS is ${text.length} characters, more than 4096`);
  for (const pair of text.split(';')) {
    const m = /^([A-Za-z0-9_]{1,64})=([^;]*)$/.exec(pair);
    if (!m) throw envError(`CNI_ARGS: '${pair.slice(0, 64)}' is not KEY=VALUE`);
    args[m[1]!] = m[2]!;
  }
  const ignore = /^(1|true)$/i.test(args.IgnoreUnknown ?? '');
  const unknown = Object.keys(args).filter((k) => !KNOWN_ARGS.has(k));
  if (unknown.length && !ignore) throw envError(`CNI_ARGS: unknown key '${unknown[0]}' (known: ${[...KNOWN_ARGS].join(', ')}; IgnoreUnknown=1 skips the rest)`);
  return args;
}

/** One attachment the runtime still wants (GC). */
export interface CniAttachmentRef {
  containerID: string;
  ifname: string;
}

/** What the stdin configuration holds, as the schema admits it. */
interface RawConfig {
  cniVersion: string;
  cniVersions?: string[];
  name: string;
  type: 'ocinet';
  bridge?: string;
  subnet?: string;
  subnet6?: string;
  mtu?: number;
  ipMasq?: boolean;
  stateDir?: string;
  log?: string;
  firewall?: string;
  publishRange?: string;
  keepBridge?: boolean;
  allowSpoofing?: boolean;
  runtimeConfig?: {
    portMappings?: { hostPort: number; containerPort: number; protocol?: string; hostIP?: string }[];
    ips?: string[];
  };
  prevResult?: Record<string, unknown>;
  dns?: Record<string, unknown>;
  'cni.dev/valid-attachments'?: CniAttachmentRef[];
  'cni.dev/attachments'?: CniAttachmentRef[];
}

export interface CniConfig {
  cniVersion: CniVersion;
  name: string;
  bridge: string;
  subnet: string;
  subnet6?: string;
  mtu: number;
  stateDir: string;
  logFile: string | null;
  firewall: BackendChoice;
  keepBridge: boolean;
  allowSpoofing: boolean;
  ports: PortMapping[];
  /** A static address: runtimeConfig.ips (the `ips` capability) or CNI_ARGS IP. */
  ip?: string;
  ip6?: string;
  prevResult?: Record<string, unknown>;
  dns?: Record<string, unknown>;
  /** GC: the attachments to keep. */
  valid?: CniAttachmentRef[];
}

/** The stdin configuration's bound: far above any conflist entry with a prevResult. */
export const CNI_CONFIG_MAX_BYTES = 4 << 20;

/** Step 1: the bytes are JSON (else decoding failure, code 6). */
export function decodeCniConfig(text: string): unknown {
  if (text.trim() === '') throw new CniError(CNI_CODE.decodingFailure, 'network configuration on stdin is empty');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new CniError(CNI_CODE.decodingFailure, `network configuration on stdin is not JSON: ${(e as Error).message}`);
  }
}

/** Step 2: a version this plugin speaks, and 1.1.0 for the commands 1.1 brought (else code 1, as libcni). */
export function cniVersionOf(raw: unknown, command: CniCommand): CniVersion {
  const v = typeof raw === 'object' && raw !== null && !Array.isArray(raw) ? (raw as { cniVersion?: unknown }).cniVersion : undefined;
  if (typeof v !== 'string') throw new CniError(CNI_CODE.invalidConfig, "network configuration: missing required field 'cniVersion'");
  if (!(CNI_VERSIONS as readonly string[]).includes(v)) {
    throw new CniError(CNI_CODE.incompatibleVersion, `network configuration field 'cniVersion': ${v.slice(0, 32)} is not supported (supported: ${CNI_VERSIONS.join(', ')})`);
  }
  if ((command === 'GC' || command === 'STATUS') && v !== '1.1.0') {
    throw new CniError(CNI_CODE.incompatibleVersion, `${command} needs cniVersion 1.1.0 or later, the configuration says ${v}`);
  }
  return v as CniVersion;
}

export const configError = (msg: string): CniError => new CniError(CNI_CODE.invalidConfig, `network configuration field ${msg}`);

/** Step 3: the configuration itself (else code 7, naming the field). */
export function parseCniConfig(raw: unknown, version: CniVersion, env: CniEnv): CniConfig {
  if (typeof raw === 'object' && raw !== null && 'ipam' in raw) {
    throw configError("'ipam': ocinet-cni allocates addresses itself (its state is shared with the hooks); remove the ipam section");
  }
  let c: RawConfig;
  try {
    c = check<RawConfig>(validateCniConfig, raw, 'network configuration');
  } catch (e) {
    throw new CniError(CNI_CODE.invalidConfig, (e as Error).message);
  }
  if (c.ipMasq === false) throw configError("'ipMasq': false is not supported (ocinet networks always masquerade outbound traffic)");
  const subnet = wrap('subnet', () => parseSubnet(c.subnet ?? DEFAULTS.subnet, 'subnet').cidr);
  const subnet6 = c.subnet6 === undefined ? undefined : wrap('subnet6', () => parseSubnet6(c.subnet6!, 'subnet6').cidr);
  const firewall = wrap('firewall', () => parseBackendChoice(c.firewall ?? 'auto', 'firewall'));
  if (subnet6 && firewall === 'iptables') throw configError("'subnet6': needs the nftables firewall backend (firewall nftables or auto)");
  const range = c.publishRange === undefined ? DEFAULT_POLICY.publishRange : wrap('publishRange', () => parseRange(c.publishRange!, 'publishRange'));
  // STATUS reports an unusable state dir (code 50) instead of refusing the configuration.
  const stateDir = wrap('stateDir', () => (env.command === 'STATUS' ? stateDirFrom : resolveStateDir)(c.stateDir ?? DEFAULT_STATE_DIR, {}));
  const out: CniConfig = {
    cniVersion: version, name: c.name, bridge: c.bridge ?? DEFAULTS.bridge, subnet, mtu: c.mtu ?? DEFAULTS.mtu, stateDir,
    logFile: c.log === 'none' ? null : (c.log ?? `${stateDir}/ocinet.log`), firewall,
    keepBridge: c.keepBridge === true, allowSpoofing: c.allowSpoofing === true,
    ports: (c.runtimeConfig?.portMappings ?? []).map((p, i) => portOf(p, i, range)),
  };
  if (c.log !== undefined && c.log !== 'none' && !c.log.startsWith('/')) throw configError(`'log': '${c.log}' must be an absolute path or none`);
  if (subnet6) out.subnet6 = subnet6;
  if (c.prevResult) out.prevResult = c.prevResult;
  if (c.dns) out.dns = c.dns;
  // libcni sends both names (a spec typo kept for compatibility).
  const valid = c['cni.dev/valid-attachments'] ?? c['cni.dev/attachments'];
  if (valid) out.valid = valid;
  for (const [i, a] of (c.runtimeConfig?.ips ?? []).entries()) {
    const addr = a.split('/')[0]!;
    if (isIPv4(addr) && out.ip === undefined) out.ip = addr;
    else if (isIPv6Address(addr) && subnet6 && out.ip6 === undefined) out.ip6 = addr;
    else throw configError(`'runtimeConfig.ips[${i}]': '${a.slice(0, 64)}' is not an IPv4 address${subnet6 ? ' or an IPv6 one' : ''} (one of each at most)`);
  }
  const argIp = env.args.IP;
  if (argIp !== undefined && out.ip === undefined) {
    if (!isIPv4(argIp)) throw envError(`CNI_ARGS: IP '${argIp.slice(0, 64)}' is not an IPv4 address`);
    out.ip = argIp;
  }
  return out;
}

function wrap<T>(field: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw configError(`'${field}': ${(e as Error).message}`);
  }
}

function portOf(p: { hostPort: number; containerPort: number; protocol?: string; hostIP?: string }, i: number, range: [number, number]): PortMapping {
  const where = `'runtimeConfig.portMappings[${i}]'`;
  const out: PortMapping = { hostPort: p.hostPort, containerPort: p.containerPort, proto: (p.protocol || 'tcp').toLowerCase() as 'tcp' | 'udp' };
  const ip = p.hostIP ?? '';
  if (ip !== '' && ip !== '0.0.0.0') {
    if (!isIPv4(ip)) throw configError(`${where}: hostIP '${ip.slice(0, 64)}' is not an IPv4 address (IPv6 host addresses are not supported)`);
    out.hostIp = ip;
  }
  const [lo, hi] = range;
  if (p.hostPort < lo || p.hostPort > hi) throw configError(`${where}: host port ${p.hostPort} is outside the configuration's publishRange (${lo}-${hi})`);
  return out;
}
