/**
 * The one place ocinet runs external programs. No shell: arguments go as an
 * array. Programs are resolved to absolute paths ourselves, because runc's
 * `"env": []` hands hooks an environment without PATH.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { OcinetError } from './errors.js';

const SEARCH_DIRS = ['/usr/sbin', '/usr/bin', '/sbin', '/bin', '/usr/local/sbin', '/usr/local/bin'];
const resolved = new Map<string, string>();

/** Absolute path of a program, or an OcinetError naming the package to install. */
export function which(program: string): string {
  if (program.startsWith('/')) return program;
  const hit = resolved.get(program);
  if (hit) return hit;
  for (const dir of SEARCH_DIRS) {
    const p = `${dir}/${program}`;
    try {
      accessSync(p, constants.X_OK);
      resolved.set(program, p);
      return p;
    } catch {
      /* try the next directory */
    }
  }
  throw new OcinetError('EKERNEL', `program '${program}' not found in ${SEARCH_DIRS.join(':')} (run 'ocinet doctor')`);
}

export function hasProgram(program: string): boolean {
  try {
    which(program);
    return true;
  } catch {
    return false;
  }
}

/**
 * Descriptors every child gets after stdin/out/err, so a path such as
 * `/proc/self/fd/3` names in the child what the descriptor names here (a
 * container's network namespace opened once). A freed slot stays 'ignore',
 * so the numbers handed out never shift.
 */
const inherited: (number | 'ignore')[] = [];

/** Hand `fd` to every child from now on; returns the number it has there. */
export function inheritFd(fd: number): number {
  inherited.push(fd);
  return 2 + inherited.length;
}

export function stopInheriting(childFd: number): void {
  if (inherited[childFd - 3] !== undefined) inherited[childFd - 3] = 'ignore';
}

export interface RunOptions {
  /** Written to the program's stdin, then stdin is closed. */
  input?: string;
  /** Return a non-zero exit instead of throwing. */
  allowFail?: boolean;
  /** Kill the program after this many ms (default 30 s). */
  timeoutMs?: number;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

// A fixed, small environment: children must not depend on the caller's.
const CHILD_ENV = { PATH: SEARCH_DIRS.join(':'), LC_ALL: 'C' };

export function run(program: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const file = which(program);
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env: CHILD_ENV, stdio: ['pipe', 'pipe', 'pipe', ...inherited] }) as ChildProcessWithoutNullStreams;
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 30_000);
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.stdin.on('error', () => {
      /* the program may exit before reading all input; its exit code tells */
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new OcinetError('EEXEC', `${program}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const res: RunResult = {
        code: code ?? 128,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      };
      if (timedOut) return reject(new OcinetError('EEXEC', `${program} ${args.join(' ')}: timed out`));
      if (res.code !== 0 && !opts.allowFail) {
        const why = (res.stderr || res.stdout).trim().split('\n').slice(-2).join('; ') || `signal ${signal ?? '?'}`;
        return reject(new OcinetError('EEXEC', `${program} ${args.slice(0, 3).join(' ')}: ${why}`));
      }
      resolve(res);
    });
    child.stdin.end(opts.input ?? '');
  });
}
