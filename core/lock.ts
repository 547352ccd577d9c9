/**
 * A lock no killed process can leave held: binding an abstract unix socket
 * is exclusive, and the kernel releases the name when its owner dies (even on
 * SIGKILL). Abstract names live per network namespace, which is where runc
 * runs all hooks of one host; the name is derived from the state directory.
 */
import { createServer, type Server } from 'node:net';
import { mkdirSync, realpathSync } from 'node:fs';
import { OcinetError } from './errors.js';

export interface Lock {
  release(): Promise<void>;
}

function tryBind(name: string): Promise<Server | null> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EADDRINUSE') resolve(null);
      else reject(new OcinetError('ELOCK', `lock ${name.slice(1)}: ${e.message}`));
    });
    srv.listen({ path: name, exclusive: true }, () => resolve(srv));
  });
}

/** The lock's name; creates the state directory, which every locked step writes into. */
export function lockName(stateDir: string): string {
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  return '\0ocinet-lock:' + realpathSync(stateDir);
}

export async function acquire(stateDir: string, timeoutMs = 30_000): Promise<Lock> {
  const name = lockName(stateDir);
  const deadline = Date.now() + timeoutMs;
  let wait = 1;
  for (;;) {
    const srv = await tryBind(name);
    if (srv) {
      srv.unref();
      return { release: () => new Promise<void>((r) => srv.close(() => r())) };
    }
    if (Date.now() > deadline) throw new OcinetError('ELOCK', `state lock for ${stateDir} still held after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, wait + Math.random() * wait));
    wait = Math.min(wait * 2, 20);
  }
}

/** Run fn while holding the state lock. */
export async function withLock<T>(stateDir: string, fn: () => Promise<T> | T): Promise<T> {
  const lock = await acquire(stateDir);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}
