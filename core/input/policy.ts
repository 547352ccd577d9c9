/**
 * What annotations may ask for. The hook entry's args are the admin's;
 * annotations, the container id and the bundle's files are the container
 * user's, who may be hostile. The policy comes from the hook entry and is
 * safe for multi-tenant hosts by default: annotations create new devices
 * only (named with the admin's prefix), reach QEMU sockets only in the
 * container's own VM directory, publish host ports only in a range.
 */
import { lstatSync } from 'node:fs';
import { normalize } from 'node:path';
import { OcinetError } from '../base/errors.js';

export interface AnnotationPolicy {
  /** Host devices an annotation may move into its container (glob patterns, `*` only). */
  hostDevices: string[];
  /** Host devices an annotation creates must start with this (empty string: every unused name is allowed). */
  devicePrefix: string;
  /** Admin-allowed directories: every QEMU socket below them is allowed. */
  vmSocketDirs: string[];
  /** Host ports an annotation may publish. */
  publishRange: [number, number];
}

/** Kata's VM directory, then ocinet's own: only `<dir>/<id>/` of the container's own id. */
export const VM_SOCKET_DIRS = ['/run/vc/vm', '/run/ocinet/vm'];

export const DEFAULT_POLICY: AnnotationPolicy = { hostDevices: [], devicePrefix: 'ocx', vmSocketDirs: [], publishRange: [1024, 65535] };

/** Annotation limits: bytes per value and items per list, checked before anything else. */
export const ANNOTATION_MAX_BYTES: Record<string, number> = {
  'io.ocinet.publish': 4096,
  'io.ocinet.ip': 64,
  'io.ocinet.ip6': 64,
  'io.ocinet.interfaces': 16384,
  'io.ocinet.routes': 16384,
  'io.ocinet.ipvs': 1 << 20,
  'io.ocinet.mode': 16,
  'io.ocinet.qmp': 256,
  'io.ocinet.qga': 256,
};
export const MAX_ANNOTATION_ITEMS = { ports: 64, interfaces: 8, routes: 64 };

function globMatch(pattern: string, name: string): boolean {
  const re = new RegExp('^' + pattern.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*') + '$');
  return re.test(name);
}

export function mayMoveHostDevice(p: AnnotationPolicy, name: string): boolean {
  return p.hostDevices.some((g) => globMatch(g, name));
}

/** A new host device an annotation wants: refused unless it carries the admin's prefix. */
export function checkNewDeviceName(p: AnnotationPolicy, name: string, where: string): void {
  if (!name.startsWith(p.devicePrefix)) {
    throw new OcinetError(
      'EINPUT',
      `${where}: device '${name}' must start with '${p.devicePrefix}' (host devices an annotation creates carry the prefix the hook entry's --annotation-device-prefix sets)`,
    );
  }
}

export function checkPublishRange(p: AnnotationPolicy, hostPort: number, where: string): void {
  const [lo, hi] = p.publishRange;
  if (hostPort < lo || hostPort > hi) {
    throw new OcinetError('EINPUT', `${where}: host port ${hostPort} is outside the range the hook entry allows (${lo}-${hi}; --publish-range)`);
  }
}

export function parseRange(text: string, what: string): [number, number] {
  const m = /^(\d{1,5})-(\d{1,5})$/.exec(text);
  const lo = Number(m?.[1]);
  const hi = Number(m?.[2]);
  if (!m || lo < 1 || hi > 65535 || lo > hi) throw new OcinetError('EINPUT', `${what} '${text}' must be LO-HI within 1-65535`);
  return [lo, hi];
}

/**
 * A QEMU socket an annotation names: below an admin-allowed directory, or in
 * the container's own `<dir>/<id>/` of the default VM directories; no `..`,
 * no symlink below the directory, and a socket. Checked before any connect.
 */
export function checkVmSocket(p: AnnotationPolicy, path: string, id: string, where: string): void {
  const roots = [...p.vmSocketDirs.map((d) => d.replace(/\/+$/, '')), ...(isPlainId(id) ? VM_SOCKET_DIRS.map((d) => `${d}/${id}`) : [])];
  const root = roots.find((r) => path.startsWith(r + '/'));
  const why = !path.startsWith('/') || normalize(path) !== path
    ? 'must be an absolute, normalized path'
    : !root
      ? `is not in a directory the hook entry allows (${roots.join(', ')}; --allow-vm-sockets DIR)`
      : socketProblem(root, path);
  if (why) throw new OcinetError('EINPUT', `${where}: '${path}' ${why}`);
}

/** The per-id default paths: the id must be a plain name, never `.` or `..`. */
export function isPlainId(id: string): boolean {
  return id !== '.' && id !== '..' && !id.includes('/');
}

/** What is wrong below `root` on the way to `path` (a symlink, a missing part, not a socket), or null. */
export function socketProblem(root: string, path: string): string | null {
  const parts = path.slice(root.length + 1).split('/');
  let cur = root;
  for (const [i, part] of parts.entries()) {
    cur += '/' + part;
    const st = lstatSync(cur, { throwIfNoEntry: false });
    if (!st) return 'does not exist';
    if (st.isSymbolicLink()) return `has a symlink (${cur})`;
    if (i === parts.length - 1 && !st.isSocket()) return 'is not a unix socket';
  }
  return null;
}
