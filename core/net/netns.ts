/**
 * Network namespaces of processes. Node cannot setns(), so work inside a
 * namespace goes through one `nsenter --net=... ip -batch -` per step: one
 * exec, all commands on stdin.
 */
import { closeSync, fstatSync, openSync, statSync } from 'node:fs';
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

/** The container's netns id; refuses dead pids and the hook's own namespace. */
export function containerNetns(pid: number): string {
  const id = netnsId(pidNetnsPath(pid));
  if (!id) throw new OcinetError('ENOTFOUND', `process ${pid} does not exist (no ${pidNetnsPath(pid)})`);
  if (id === netnsId('/proc/self/ns/net')) {
    throw new OcinetError(
      'ESELFNS',
      `process ${pid} is in the hook's own network namespace; refusing to move or rename host interfaces (give the container a "network" namespace)`,
    );
  }
  return id;
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
  /** `dev:inode` of the namespace. */
  id: string;
  pid: number;
  /** The process's start time when it was opened. */
  start: number;
  /** True while the pid is still that same process. */
  sameProcess(): boolean;
  close(): void;
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
  const st = fstatSync(fd);
  const id = `${st.dev}:${st.ino}`;
  if (id === netnsId('/proc/self/ns/net')) {
    closeSync(fd);
    throw new OcinetError(
      'ESELFNS',
      `process ${pid} is in the hook's own network namespace; refusing to move or rename host interfaces (give the container a "network" namespace)`,
    );
  }
  const childFd = inheritFd(fd);
  return {
    path: `/proc/self/fd/${childFd}`,
    id,
    pid,
    start,
    sameProcess: () => startTime(pid) === start,
    close: () => {
      stopInheriting(childFd);
      closeSync(fd);
    },
  };
}

/** Run `ip -batch -` with the given commands inside the namespace at nsPath. */
export async function ipBatchIn(nsPath: string, lines: string[]): Promise<void> {
  if (lines.length === 0) return;
  await run('nsenter', [`--net=${nsPath}`, '--', 'ip', '-batch', '-'], { input: lines.join('\n') + '\n' });
}

/** Run `ip -batch -` in the caller's namespace. */
export async function ipBatch(lines: string[], allowFail = false): Promise<{ code: number; stderr: string }> {
  if (lines.length === 0) return { code: 0, stderr: '' };
  // -force: go on after a failing line, so a cleanup batch removes all it can.
  const args = allowFail ? ['-force', '-batch', '-'] : ['-batch', '-'];
  return run('ip', args, { input: lines.join('\n') + '\n', allowFail });
}
