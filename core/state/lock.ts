/**
 * The state lock: flock(2) on STATE_DIR/lock, as CNI's host-local does.
 * Only root can take it: the file sits in the root-owned 0700 state dir
 * (checked by statedir.ts), so no other user can open it, let alone lock it.
 * The kernel drops the lock when its descriptor closes, and a killed
 * process's descriptors close (SIGKILL too); the descriptor is close-on-exec,
 * so a program the holder started never keeps it. Node has no flock, so a
 * small N-API addon (build/native/lock.c, in dist/bin/native.node) opens and locks.
 */
import { closeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { isOcinetError, OcinetError } from '../base/errors.js';
import { native } from '../base/native.js';
import { useStateDir } from './statedir.js';

export interface Lock {
  release(): Promise<void>;
}

/** What `ocinet doctor` says about the lock. */
export const LOCK_MECHANISM = 'flock(2) on STATE_DIR/lock (root-only 0700 dir, released by the kernel when the holder dies)';

/** The lock file; checks the state dir and creates it (0700), as every locked step writes into it. */
export function lockName(stateDir: string): string {
  useStateDir(stateDir);
  return join(stateDir, 'lock');
}

function tryLock(path: string): number {
  try {
    return native().lock(path);
  } catch (e) {
    // An addon that does not load says so itself; a failing open or flock is named by its path.
    throw new OcinetError('ELOCK', isOcinetError(e) ? e.message : `state lock ${path}: ${(e as Error).message}`);
  }
}

/**
 * `name`: `lock` is the state lock (state.json: addresses, ports, records);
 * `lock.sb-<key>` a sandbox's own lock (its kata-network record and IPVS
 * table), so that a slow guest or a big batch holds up only its sandbox.
 */
export async function acquire(stateDir: string, timeoutMs = 30_000, name = 'lock'): Promise<Lock> {
  const path = name === 'lock' ? lockName(stateDir) : join(dirname(lockName(stateDir)), name);
  const deadline = Date.now() + timeoutMs;
  let wait = 1;
  for (;;) {
    const fd = tryLock(path);
    if (fd >= 0) {
      let held = true;
      return {
        release: async () => {
          if (held) closeSync(fd);
          held = false;
        },
      };
    }
    if (Date.now() > deadline) throw new OcinetError('ELOCK', `state lock ${path} still held after ${timeoutMs} ms (another ocinet run is stuck in it)`);
    await new Promise((r) => setTimeout(r, wait + Math.random() * wait));
    wait = Math.min(wait * 2, 20);
  }
}

/** Run fn while holding the state lock. */
export async function withLock<T>(stateDir: string, fn: () => Promise<T> | T, name = 'lock', timeoutMs = 30_000): Promise<T> {
  const lock = await acquire(stateDir, timeoutMs, name);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}

/** Run fn while holding one sandbox's own lock (not the state lock: other containers go on). */
export function withSandboxLock<T>(stateDir: string, sandboxKey: string, fn: () => Promise<T> | T, timeoutMs = 30_000): Promise<T> {
  if (!/^[A-Za-z0-9-]+$/.test(sandboxKey)) throw new OcinetError('EINPUT', `sandbox key '${sandboxKey}' is not a lock name`);
  return withLock(stateDir, fn, `lock.sb-${sandboxKey}`, timeoutMs);
}
