/**
 * Network namespaces of processes. Node cannot setns(), so work inside a
 * namespace goes through one `nsenter --net=... ip -batch -` per step: one
 * exec, all commands on stdin.
 */
import { statSync } from 'node:fs';
import { OcinetError } from './errors.js';
import { run } from './exec.js';

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
