/**
 * Network namespaces of processes. Node cannot setns(): a container's veth
 * side is set up over rtnetlink (veth.ts, through native.node); other work
 * inside a namespace goes through one `nsenter --net=... ip -batch -` per
 * step: one exec, all commands on stdin.
 */
import { closeSync, constants, fstatSync, openSync, statSync } from 'node:fs';
import { OcinetError } from '../base/errors.js';
import { inheritFd, run, stopInheriting } from '../base/exec.js';
import { startTime } from '../base/proc.js';

/** `dev:inode` of a network namespace file, or null when it is gone. */
export function netnsId(path: string): string | null {
  try {
    const st = statSync(path);
    return `${st.dev}:${st.ino}`;
  } catch {
    return null;
  }
}

export function pidNetnsPath(pid: number): string {
  return `/proc/${pid}/ns/net`;
}

/**
 * A container's network namespace, opened once while its process is known to
 * be the one the runtime named. All later work goes through `path`
 * (`/proc/self/fd/N` in every child ocinet runs), never through the pid
 * again: if the container dies while the hook waits and a host process gets
 * its pid, nothing lands in the host's namespace.
 */
export interface NetnsHandle {
  path: string;
  /** The open descriptor (for rtnetlink in the namespace). */
  fd: number;
  /** `dev:inode` of the namespace. */
  id: string;
  /**
   * What names the sandbox in its record: a process (pid + start time) or a
   * runtime's namespace file (nsPath, a bind mount), with the namespace's id.
   */
  identity: { pid?: number; start?: number; netns: string; nsPath?: string };
  /** What the namespace was named by, for messages. */
  what: string;
  /** True while the process (or the runtime's namespace file) still names this namespace. */
  alive(): boolean;
  close(): void;
}

const selfNsError = (what: string): OcinetError =>
  new OcinetError('ESELFNS', `${what} is in the hook's own network namespace; refusing to move or rename host interfaces (give the container a "network" namespace)`);

/** The handle of an opened namespace fd (refused when it is the hook's own). */
function handle(fd: number, what: string, identity: Omit<NetnsHandle['identity'], 'netns'>, alive: () => boolean): NetnsHandle {
  const st = fstatSync(fd);
  const id = `${st.dev}:${st.ino}`;
  if (id === netnsId('/proc/self/ns/net')) {
    closeSync(fd);
    throw selfNsError(what);
  }
  const childFd = inheritFd(fd);
  return {
    path: `/proc/self/fd/${childFd}`,
    fd,
    id,
    identity: { ...identity, netns: id },
    what,
    alive,
    close: () => {
      stopInheriting(childFd);
      closeSync(fd);
    },
  };
}

export function openContainerNetns(pid: number): NetnsHandle {
  const gone = (): OcinetError => new OcinetError('ENOTFOUND', `process ${pid} does not exist (no ${pidNetnsPath(pid)})`);
  const start = startTime(pid);
  if (start === null) throw gone();
  let fd: number;
  try {
    fd = openSync(pidNetnsPath(pid), 'r');
  } catch {
    throw gone();
  }
  // The pid could have changed hands between the two reads: the start time tells.
  if (startTime(pid) !== start) {
    closeSync(fd);
    throw gone();
  }
  return handle(fd, `process ${pid}`, { pid, start }, () => startTime(pid) === start);
}

/**
 * A network namespace named by a file (a CNI runtime's bind mount such as
 * /run/netns/NAME, or /proc/PID/ns/net). Opened without blocking (a FIFO
 * cannot stall it) and refused unless it is a namespace file. A
 * /proc/PID/ns/net path names the process, as the hook does.
 */
export function openNetnsPath(path: string): NetnsHandle {
  const proc = /^\/proc\/([1-9]\d{0,6})\/ns\/net$/.exec(path);
  if (proc) return openContainerNetns(Number(proc[1]));
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (e) {
    throw new OcinetError('ENOTFOUND', `network namespace ${path} cannot be opened (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  // A namespace file lives on nsfs, as the hook's own namespace does; setns refuses other kinds later.
  const own = statSync('/proc/self/ns/net');
  const st = fstatSync(fd);
  if (st.dev !== own.dev) {
    closeSync(fd);
    throw new OcinetError('EINPUT', `${path} is not a network namespace`);
  }
  const h = handle(fd, `network namespace ${path}`, { nsPath: path }, () => netnsId(path) === h.id);
  return h;
}

/** Run `ip -batch -` with the given commands inside the namespace at nsPath. */
export async function ipBatchIn(nsPath: string, lines: string[]): Promise<void> {
  if (lines.length === 0) return;
  await run('nsenter', [`--net=${nsPath}`, '--', 'ip', '-batch', '-'], { input: lines.join('\n') + '\n' });
}

/**
 * What `ip -batch` prints for show commands inside the namespace at nsPath
 * (`-6`: of IPv6). Only `addr` and `route` shows: in a batch, a `link show`
 * makes the next `addr show` list links again (iproute2 6.1).
 */
export async function ipShowIn(nsPath: string, lines: string[], family?: '-6'): Promise<string> {
  const ip = ['ip', ...(family ? [family] : []), '-force', '-batch', '-'];
  return (await run('nsenter', [`--net=${nsPath}`, '--', ...ip], { input: lines.join('\n') + '\n', allowFail: true })).stdout;
}

/** Run `ip -batch -` in the caller's namespace. */
export async function ipBatch(lines: string[], allowFail = false): Promise<{ code: number; stderr: string }> {
  if (lines.length === 0) return { code: 0, stderr: '' };
  // -force: go on after a failing line, so a cleanup batch removes all it can.
  const args = allowFail ? ['-force', '-batch', '-'] : ['-batch', '-'];
  return run('ip', args, { input: lines.join('\n') + '\n', allowFail });
}
