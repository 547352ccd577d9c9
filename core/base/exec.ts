/**
 * The one place ocinet runs external programs. No shell: arguments go as an
 * array. Programs are resolved to absolute paths ourselves, because runc's
 * `"env": []` hands hooks an environment without PATH.
 */
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { clip, ERROR_LINE_MAX, OcinetError } from './errors.js';

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

/** Default caps on what run() keeps of a program's output (bytes, head + tail). */
export const MAX_STDOUT = 16 * 1024 * 1024;
export const MAX_STDERR = 128 * 1024;

/**
 * Keeps the first and the last max/2 bytes of a stream and counts what fell
 * between, so a program (or a guest) writing without end costs at most
 * `max` bytes plus one chunk of memory.
 */
export class HeadTail {
  private readonly headMax: number;
  private readonly tailMax: number;
  private readonly head: Buffer[] = [];
  private headLen = 0;
  private readonly tail: Buffer[] = [];
  private tailLen = 0;
  /** Every byte pushed, kept or not. */
  total = 0;

  constructor(max: number) {
    this.headMax = Math.ceil(max / 2);
    this.tailMax = max - this.headMax;
  }

  push(b: Buffer): void {
    this.total += b.length;
    if (this.headLen < this.headMax) {
      const n = Math.min(b.length, this.headMax - this.headLen);
      this.head.push(b.subarray(0, n));
      this.headLen += n;
      b = b.subarray(n);
      if (b.length === 0) return;
    }
    this.tail.push(b);
    this.tailLen += b.length;
    // Drop whole chunks while the rest still covers the tail.
    while (this.tail.length > 1 && this.tailLen - this.tail[0]!.length >= this.tailMax) this.tailLen -= this.tail.shift()!.length;
  }

  /** Bytes dropped between head and tail. */
  get cut(): number {
    return Math.max(0, this.total - this.headLen - Math.min(this.tailLen, this.tailMax));
  }

  /** The text, with `…[N bytes cut]…` where the middle was dropped. */
  text(): string {
    let tail = Buffer.concat(this.tail, this.tailLen);
    if (tail.length > this.tailMax) tail = tail.subarray(tail.length - this.tailMax);
    const head = Buffer.concat(this.head, this.headLen);
    const cut = this.total - head.length - tail.length;
    if (cut <= 0) return Buffer.concat([head, tail]).toString('utf8');
    return `${head.toString('utf8')}…[${cut} bytes cut]…${tail.toString('utf8')}`;
  }
}

/**
 * The last `lines` lines of a program's output as one short clause for an
 * error message (stderr first, stdout if stderr is empty).
 */
export function outputReason(stderr: string, stdout: string, lines = 2): string {
  const text = (stderr.trim() ? stderr : stdout).trim();
  // Only the end is looked at: the reason is there, and the text may be large.
  const end = text.length > 4 * ERROR_LINE_MAX ? text.slice(-4 * ERROR_LINE_MAX) : text;
  return clip(end.split('\n').slice(-lines).join('; ').trim());
}

export interface RunOptions {
  /** Written to the program's stdin, then stdin is closed. */
  input?: string;
  /** Return a non-zero exit instead of throwing. */
  allowFail?: boolean;
  /** Kill the program after this many ms (default 30 s). */
  timeoutMs?: number;
  /**
   * Bytes of stdout kept (default MAX_STDOUT): beyond it the middle is cut.
   * A cut stdout of a successful run is an error unless allowFail is set:
   * callers parse stdout and must not parse a partial listing.
   */
  maxStdout?: number;
  /** Bytes of stderr kept (default MAX_STDERR), head and tail. */
  maxStderr?: number;
  /**
   * The program's work is done, with success, once its stdout (so far)
   * satisfies this: resolve then (code 0), without waiting for its exit.
   * For programs whose exit waits on the kernel after the work is done
   * (nft after a deleting transaction waits an RCU grace period when it
   * closes its netlink socket). The child is left to exit by itself; its
   * stdio are the caller's pipes, never the caller's own stdout/stderr, so a
   * runtime waiting for the hook's output does not wait for it. Never matched:
   * the exit decides, as without this option.
   */
  doneWhen?: (stdout: string) => boolean;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  /** Bytes cut out of the middle of stdout / stderr (0: whole). */
  stdoutCut: number;
  stderrCut: number;
}

// A fixed, small environment: children must not depend on the caller's.
const CHILD_ENV = { PATH: SEARCH_DIRS.join(':'), LC_ALL: 'C' };

export function run(program: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const file = which(program);
  const what = `${program} ${args.slice(0, 3).join(' ')}`;
  return new Promise((resolve, reject) => {
    // Loaded here, at the first run, not with the bundle: child_process (with net and stream) costs
    // ~3 ms of a start, and --version, --help and some CLI commands never run a program.
    const { spawn } = process.getBuiltinModule('node:child_process');
    const child = spawn(file, args, { env: CHILD_ENV, stdio: ['pipe', 'pipe', 'pipe', ...inherited] }) as ChildProcessWithoutNullStreams;
    const out = new HeadTail(opts.maxStdout ?? MAX_STDOUT);
    const err = new HeadTail(opts.maxStderr ?? MAX_STDERR);
    let settled = false;
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      // A grandchild may still hold the pipes open: 'close' could never come.
      child.stdout.destroy();
      child.stderr.destroy();
      settled = true;
      reject(new OcinetError('EEXEC', `${what}: timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    let seen = '';
    child.stdout.on('data', (b: Buffer) => {
      out.push(b);
      if (!opts.doneWhen || settled || seen.length > 64 * 1024) return;
      seen += b.toString('utf8');
      if (!opts.doneWhen(seen)) return;
      clearTimeout(timer);
      settled = true;
      // Not waited for: it must not keep this process alive either.
      child.unref();
      for (const pipe of [child.stdout, child.stderr] as unknown as { unref(): void }[]) pipe.unref();
      resolve({ code: 0, stdout: out.text(), stderr: err.text(), stdoutCut: out.cut, stderrCut: err.cut });
    });
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.stdin.on('error', () => {
      /* the program may exit before reading all input; its exit code tells */
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      if (settled) return;
      settled = true;
      reject(new OcinetError('EEXEC', `${program}: ${clip(e.message)}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (settled) return;
      settled = true;
      const res: RunResult = { code: code ?? 128, stdout: out.text(), stderr: err.text(), stdoutCut: out.cut, stderrCut: err.cut };
      if (res.code !== 0 && !opts.allowFail) {
        return reject(new OcinetError('EEXEC', `${what}: ${outputReason(res.stderr, res.stdout) || `signal ${signal ?? '?'}`}`));
      }
      if (res.stdoutCut > 0 && !opts.allowFail) {
        return reject(new OcinetError('EEXEC', `${what}: output of ${out.total} bytes is over the ${opts.maxStdout ?? MAX_STDOUT}-byte cap (not used cut)`));
      }
      resolve(res);
    });
    child.stdin.end(opts.input ?? '');
  });
}
