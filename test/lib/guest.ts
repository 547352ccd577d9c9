/** The booted test guest for a test file: boot once at load, kill at the end. */
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { borrowedAgent } from '../../core/kata/records.js';
import { guestRun, type VmSockets } from '../../core/vm/hotplug.js';
import { ROOT } from './env.js';

export interface Guest {
  sockets: VmSockets;
  /** boot-guest.sh's exit status and stderr, for the test to assert on. */
  boot: { status: number | null; stderr: string };
  qemuPid(): number;
  kill(): void;
  /** Run a program in the guest through its agent (test plumbing, not product code). */
  exec(path: string, args: string[], timeoutMs?: number): Promise<{ exitcode: number; stdout: string; stderr: string }>;
  /** The last lines the guest printed on its console (its init says when qemu-ga exits): for failure messages. */
  consoleTail(lines?: number): string;
}

/**
 * Boots the guest under `dir`; at the test's end QEMU is killed and `dir` removed. With the
 * state dir the test's `ocinet` calls use, exec borrows the agent connection they keep.
 */
export function bootGuest(dir: string, t: { teardown(fn: () => void): void }, stateDir?: string): Guest {
  const g = join(dir, 'guest');
  const r = spawnSync('bash', [join(ROOT, 'build/guest/boot-guest.sh'), g], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 120_000 });
  const sockets = { qmp: join(g, 'qmp.sock'), qga: join(g, 'qga.sock') };
  const qemuPid = (): number => Number(readFileSync(join(g, 'qemu.pid'), 'utf8').trim());
  const kill = (): void => {
    try {
      process.kill(qemuPid(), 'SIGKILL');
    } catch {
      /* gone */
    }
  };
  t.teardown(() => {
    kill();
    rmSync(dir, { recursive: true, force: true });
  });
  return {
    sockets,
    boot: { status: r.status, stderr: String(r.stderr) },
    qemuPid,
    kill,
    consoleTail: (lines = 5) => {
      try {
        return readFileSync(join(g, 'console.log'), 'utf8').trim().split('\n').slice(-lines).join(' | ');
      } catch {
        return '(no console log)';
      }
    },
    exec: (path, args, timeoutMs = 20_000) => guestRun(sockets, path, args, { timeoutMs, ...(stateDir && { hold: borrowedAgent(sockets, stateDir) }) }),
  };
}
