/**
 * QMP client (QEMU Machine Protocol) over QEMU's unix socket: greeting,
 * qmp_capabilities, commands matched to replies by id, events to waiters.
 * Every operation has a timeout, and a closed socket (QEMU died) rejects
 * everything pending, so nothing here can hang.
 */
import type { Socket } from 'node:net';
import { clip, OcinetError } from '../base/errors.js';

export type JsonObject = Record<string, unknown>;

const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * Longest message line accepted (bytes). A guest-exec-status reply carries
 * the program's output in base64, so this also bounds what a guest program
 * can hand back (a 20000-rule IPVS listing is ~1.6 MB of base64).
 */
export const MAX_LINE = 8 * 1024 * 1024;

/**
 * Splits a stream into JSON objects, one per line (QEMU and qemu-ga end each
 * message with a newline and never put one inside). Junk before '{' and lines
 * that do not parse are dropped: a guest can write anything on its channel.
 * A line longer than `maxLine` is dropped as it streams in (never held
 * whole), and `onOversized` is told once per such line.
 * Shared with the guest agent client.
 */
export class JsonLineReader {
  private chunks: Buffer[] = [];
  private len = 0;
  private dropping = false;
  constructor(
    private readonly maxLine: number = MAX_LINE,
    private readonly onOversized?: () => void,
  ) {}

  push(chunk: Buffer): JsonObject[] {
    const out: JsonObject[] = [];
    // Only the new chunk is searched for newlines: a long line costs O(n), not O(n²).
    for (let from = 0; ; ) {
      const nl = chunk.indexOf(0x0a, from);
      const piece = chunk.subarray(from, nl < 0 ? chunk.length : nl);
      if (!this.dropping && piece.length > 0) {
        if (this.len + piece.length > this.maxLine) {
          this.dropping = true;
          this.chunks = [];
          this.len = 0;
          this.onOversized?.();
        } else {
          this.chunks.push(piece);
          this.len += piece.length;
        }
      }
      if (nl < 0) return out;
      if (!this.dropping) {
        const msg = parseLine(Buffer.concat(this.chunks, this.len));
        if (msg) out.push(msg);
      }
      this.chunks = [];
      this.len = 0;
      this.dropping = false;
      from = nl + 1;
    }
  }
}

function parseLine(line: Buffer): JsonObject | undefined {
  // Junk before '{' (0xFF sync bytes, guest garbage) is skipped.
  const start = line.indexOf(0x7b);
  if (start < 0) return undefined;
  try {
    const v: unknown = JSON.parse(line.subarray(start).toString('utf8'));
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as JsonObject;
  } catch {
    /* garbage line: skip */
  }
  return undefined;
}

/** Connect to a unix socket with a deadline and an error that says what failed. */
export function connectUnix(path: string, timeoutMs: number, what: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    // node:net here, not with the bundle: only TAP mode talks to sockets (it costs ~2 ms of a start).
    const sock = process.getBuiltinModule('node:net').connect({ path });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new OcinetError('EEXEC', `${what} socket ${path}: no connection within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.removeAllListeners('error');
      resolve(sock);
    });
    sock.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(connectFailure(what, path, e.code ?? e.message, timeoutMs));
    });
  });
}

/** A failed connect to a QEMU socket, by its errno name (callers test this wording: hotplug's qemuGone). */
export function connectFailure(what: string, path: string, code: string, timeoutMs: number): OcinetError {
  const hint =
    code === 'ENOENT'
      ? 'no such socket (is QEMU running?)'
      : code === 'ECONNREFUSED'
        ? 'refused (QEMU gone?)'
        : code === 'ETIMEDOUT'
          ? `no connection within ${timeoutMs} ms`
          : code;
  return new OcinetError('EEXEC', `${what} socket ${path}: ${hint}`);
}

export interface QmpGreeting {
  QMP: {
    version: { qemu: { major: number; minor: number; micro: number }; package: string };
    capabilities: string[];
  };
}

export interface QmpEvent {
  event: string;
  data?: JsonObject;
  timestamp?: { seconds: number; microseconds: number };
}

/** A QEMU protocol (QMP, or the guest agent's) answered a command with an error of class `errorClass`. */
export class QemuCommandError extends OcinetError {
  readonly command: string;
  readonly errorClass: string;
  constructor(protocol: string, command: string, errorClass: string, desc: string) {
    super('EEXEC', `${protocol} ${command}: ${clip(desc)}`);
    this.command = command;
    this.errorClass = errorClass;
  }
}

/** QEMU answered a command with an error; `errorClass` is QMP's class (GenericError, DeviceNotFound, ...). */
export class QmpCommandError extends QemuCommandError {
  constructor(command: string, errorClass: string, desc: string) {
    super('QMP', command, errorClass, desc);
  }
}

interface Pending {
  command: string;
  resolve(v: unknown): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

interface EventWaiter {
  name: string;
  predicate: (e: QmpEvent) => boolean;
  resolve(e: QmpEvent): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

export interface QmpConnectOptions {
  /** Deadline for connect+greeting+capabilities, and the default for execute (ms). */
  timeoutMs?: number;
}

export class QmpClient {
  readonly path: string;
  /** What QEMU said first: its version and capabilities. */
  greeting!: QmpGreeting;
  private readonly sock: Socket;
  private readonly timeoutMs: number;
  private readonly reader = new JsonLineReader(MAX_LINE, () => this.failPending(`a message over ${MAX_LINE} bytes was dropped`));
  private readonly pending = new Map<string, Pending>();
  private readonly waiters = new Set<EventWaiter>();
  private readonly listeners = new Set<(e: QmpEvent) => void>();
  // Only set while connect() waits for the greeting.
  private onGreeting: ((g: QmpGreeting) => void) | null = null;
  private onClose: ((e: OcinetError) => void) | null = null;
  private closedError: OcinetError | null = null;
  private nextId = 1;

  private constructor(sock: Socket, path: string, timeoutMs: number) {
    this.sock = sock;
    this.path = path;
    this.timeoutMs = timeoutMs;
    sock.on('data', (d: Buffer) => {
      for (const msg of this.reader.push(d)) this.dispatch(msg);
    });
    sock.on('error', (e: NodeJS.ErrnoException) => this.fail(`QMP connection ${path} lost (${e.code ?? e.message}; QEMU exited?)`));
    sock.on('close', () => this.fail(`QMP connection ${path} closed (QEMU exited?)`));
  }

  /** Connect, read the greeting, leave capabilities negotiation mode. */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    const sock = await connectUnix(path, timeoutMs, 'QMP');
    const qmp = new QmpClient(sock, path, timeoutMs);
    try {
      qmp.greeting = await new Promise<QmpGreeting>((resolve, reject) => {
        const timer = setTimeout(() => {
          // QEMU serves one QMP client per socket; others wait unanswered.
          reject(new OcinetError('EEXEC', `QMP ${path}: no greeting within ${timeoutMs} ms (another client connected?)`));
        }, Math.max(1, deadline - Date.now()));
        qmp.onGreeting = (g) => {
          clearTimeout(timer);
          resolve(g);
        };
        qmp.onClose = (e) => {
          clearTimeout(timer);
          reject(e);
        };
      });
      await qmp.execute('qmp_capabilities', undefined, Math.max(1, deadline - Date.now()));
    } catch (e) {
      qmp.close();
      throw e;
    } finally {
      qmp.onGreeting = null;
      qmp.onClose = null;
    }
    return qmp;
  }

  get closed(): boolean {
    return this.closedError !== null;
  }

  /** Run a command; resolves with its `return`, rejects with QmpCommandError on `error`. */
  execute<T = unknown>(command: string, args?: JsonObject, timeoutMs: number = this.timeoutMs): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = `ocinet-${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new OcinetError('EEXEC', `QMP ${command}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      // The cast is sound: callers name the shape of the command's return.
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.sock.write(JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id }) + '\n');
    });
  }

  /**
   * Wait for the next event `name` that satisfies `predicate`. Only events
   * arriving after this call count, so call it BEFORE the command that causes
   * the event (e.g. start waiting for DEVICE_DELETED, then device_del).
   */
  waitEvent(name: string, predicate: (e: QmpEvent) => boolean = () => true, timeoutMs: number = this.timeoutMs): Promise<QmpEvent> {
    const closed = this.closedError;
    const p = new Promise<QmpEvent>((resolve, reject) => {
      if (closed) return reject(closed);
      const w: EventWaiter = {
        name,
        predicate,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.delete(w);
          reject(new OcinetError('EEXEC', `QMP: no ${name} event within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.waiters.add(w);
    });
    // A waiter abandoned after a failed command must not crash the process
    // with an unhandled rejection; whoever awaits it still sees the error.
    p.catch(() => {});
    return p;
  }

  /** Every event, as it arrives; returns an unsubscribe function. */
  onEvent(listener: (e: QmpEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  close(): void {
    this.fail(`QMP connection ${this.path} closed by us`);
    this.sock.destroy();
  }

  private dispatch(msg: JsonObject): void {
    if ('QMP' in msg) {
      this.onGreeting?.(msg as unknown as QmpGreeting);
      return;
    }
    if (typeof msg.event === 'string') {
      const ev = msg as unknown as QmpEvent;
      for (const l of this.listeners) l(ev);
      for (const w of this.waiters) {
        if (w.name !== ev.event) continue;
        let ok: boolean;
        try {
          ok = w.predicate(ev);
        } catch {
          ok = false;
        }
        if (!ok) continue;
        clearTimeout(w.timer);
        this.waiters.delete(w);
        w.resolve(ev);
      }
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const p = id === undefined ? undefined : this.pending.get(id);
    if (!p || id === undefined) return; // late reply to a timed-out command
    this.pending.delete(id);
    clearTimeout(p.timer);
    const err = msg.error as { class?: string; desc?: string } | undefined;
    if (err) p.reject(new QmpCommandError(p.command, err.class ?? 'GenericError', err.desc ?? JSON.stringify(err)));
    else p.resolve(msg.return);
  }

  /** Every command waiting fails (its reply may be the line that was dropped); the connection stays. */
  private failPending(message: string): void {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new OcinetError('EEXEC', `QMP ${p.command}: ${message}`));
    }
    this.pending.clear();
  }

  private fail(message: string): void {
    if (this.closedError) return;
    const e = new OcinetError('EEXEC', message);
    this.closedError = e;
    this.onClose?.(e);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new OcinetError('EEXEC', `QMP ${p.command}: ${message}`));
    }
    this.pending.clear();
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.reject(new OcinetError('EEXEC', `QMP: waiting for ${w.name}: ${message}`));
    }
    this.waiters.clear();
  }
}
