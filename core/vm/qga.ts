/**
 * qemu-guest-agent client over the host end of its virtio-serial chardev.
 * The agent answers one request at a time, so requests are queued; replies
 * are matched by ids no earlier client used, and anything else on the channel
 * (stale replies, guest garbage) is dropped. A 0xFF byte ahead of the first
 * request resets the agent's parser (a client before may have left half a
 * request); guest-sync resynchronises on demand.
 * Every operation has a timeout; a closed socket rejects everything pending.
 */
import { OcinetError } from '../base/errors.js';
import { HeadTail, MAX_STDERR, MAX_STDOUT } from '../base/exec.js';
import { openAgentLink, type AgentHold, type AgentLink, type AgentLinkState } from './agent-hold.js';
import { JsonLineReader, MAX_LINE, QemuCommandError, type JsonObject } from './qmp.js';

const DEFAULT_TIMEOUT_MS = 10_000;
/** Waits between guest-exec-status polls (see exec). */
const POLL_MIN_MS = 10;
const POLL_MAX_MS = 200;
/** The first poll of a program with an expected run time goes this far into it. */
const EXPECT_EARLY = 0.9;
/** The least time a poll's reply is given, however close the deadline. */
const POLL_REPLY_MS = 1_000;
/** Polls whose replies went missing, each followed by a resync, before an exec gives up. */
const MAX_LOST_POLLS = 3;
/** What guest-exec's reply is given for its request's size, beyond a request's time: slow for a TCG guest. */
const EXEC_BYTES_PER_MS = 20;
/** Bytes asked for per guest-file-read: 1 MiB is ~1.4 MB of base64, well under MAX_LINE. */
const READ_CHUNK = 1024 * 1024;

export interface GuestIpAddress {
  'ip-address': string;
  'ip-address-type': 'ipv4' | 'ipv6';
  prefix: number;
}

/** One entry of guest-network-get-interfaces (the agent's own field names). */
export interface GuestNetworkInterface {
  name: string;
  'hardware-address'?: string;
  'ip-addresses'?: GuestIpAddress[];
  statistics?: Record<string, number>;
}

export interface GuestExecOptions {
  /** Written to the program's stdin. */
  input?: string;
  /** Environment, as KEY=VALUE strings (the agent's own otherwise). */
  env?: string[];
  /** Give up waiting after this long (ms, default 30 s). The guest process is not killed: the agent cannot. */
  timeoutMs?: number;
  /** Bytes of stdout / stderr kept, head and tail (defaults as run()'s). */
  maxStdout?: number;
  maxStderr?: number;
  /**
   * How long the program is expected to run, as a ranMs of an earlier run of the same command:
   * the polls go from just before then, closer together (see exec).
   */
  expectMs?: number;
}

export interface GuestExecResult {
  /** Exit status; 128+signal when killed by a signal, as shells report it. */
  exitcode: number;
  signal?: number;
  stdout: string;
  stderr: string;
  /** Bytes cut out of the middle of stdout / stderr (0: whole; -1: cut by the agent itself). */
  stdoutCut: number;
  stderrCut: number;
  /** ms from the agent's reply to guest-exec to the poll that saw the program ended: at most this long it ran. */
  ranMs: number;
}

interface ExecStatus {
  exited: boolean;
  exitcode?: number;
  signal?: number;
  'out-data'?: string;
  'err-data'?: string;
  /** qemu-ga keeps at most 16 MiB of each and says so here. */
  'out-truncated'?: boolean;
  'err-truncated'?: boolean;
}

/** Decode one base64 output field into at most `max` bytes (head and tail). */
function decoded(b64: string | undefined, max: number, agentCut: boolean | undefined): { text: string; cut: number } {
  const buf = new HeadTail(max);
  if (b64) buf.push(Buffer.from(b64, 'base64'));
  let text = buf.text();
  if (agentCut) text += '…[cut by the guest agent]';
  return { text, cut: agentCut ? -1 : buf.cut };
}

/** What a client hears when the agent never answers: no qemu-ga in the guest, or QEMU serving another client. */
export function agentSilent(path: string, ms: number): OcinetError {
  return new OcinetError('EEXEC', `guest agent at ${path} did not answer within ${ms} ms (is qemu-ga running in the guest, and no other client connected?)`);
}

/** The agent answered with an error (`errorClass` is its QMP class). */
export class QgaCommandError extends QemuCommandError {
  constructor(command: string, errorClass: string, desc: string) {
    super('guest agent', command, errorClass, desc);
  }
}

/** A request's reply did not come within its time (the agent may still send it). */
class ReplyTimeout extends OcinetError {}
/** A request's reply never came, though the agent answers a resync. */
class LostReply extends OcinetError {}
/** A guest program ended, but the agent's reply with its exit status and output was lost. */
export class ExitUnknown extends OcinetError {}

interface Waiter {
  command: string;
  accept(msg: JsonObject): boolean;
  reject(e: Error): void;
}

export interface QgaConnectOptions {
  /** Deadline for connect+sync (or the agent's first reply), and the default per request (ms). */
  timeoutMs?: number;
  /**
   * false: no guest-sync round trip; the first request finds out whether the agent answers,
   * within the same deadline. Default true: connect answers for the agent.
   */
  sync?: boolean;
  /** Borrow a held connection, and hand this one to a holder after (agent-hold.ts). */
  hold?: AgentHold;
}

export class QgaClient {
  readonly path: string;
  private readonly link: AgentLink;
  private readonly timeoutMs: number;
  private readonly reader = new JsonLineReader(MAX_LINE, () => this.dropped());
  private waiter: Waiter | null = null;
  private queue: Promise<unknown> = Promise.resolve();
  private closedError: OcinetError | null = null;
  private nextId = 1;
  /** Ids `ocinet-<tag>-<n>`: a reply meant for an earlier client never matches. Only unlike, not secret. */
  private readonly tag = Math.floor(Math.random() * 2 ** 32).toString(16);
  /** The 0xFF reset still goes ahead of the next request written. */
  private resetPending = true;
  /** Until the agent's first reply, requests wait no later than this (connect's deadline). */
  private readonly answerBy: number;
  private heard = false;
  /** A request timed out and the agent has answered nothing since: not worth keeping. */
  private unanswered = false;

  private constructor(link: AgentLink, path: string, timeoutMs: number, answerBy: number) {
    const sock = link.sock;
    this.link = link;
    this.path = path;
    this.timeoutMs = timeoutMs;
    this.answerBy = answerBy;
    sock.on('data', (d: Buffer) => {
      for (const msg of this.reader.push(d)) {
        this.heard = true;
        if (this.waiter?.accept(msg)) this.waiter = null;
      }
    });
    sock.on('error', (e: NodeJS.ErrnoException) => this.fail(`guest agent connection ${path} lost (${e.code ?? e.message}; QEMU exited?)`));
    sock.on('close', () => this.fail(`guest agent connection ${path} closed (QEMU exited?)`));
  }

  /**
   * Connect and guest-sync. QEMU serves one client per chardev socket: a
   * second client connects but gets no answer, which shows up as a timeout here
   * (or at the first request, with `sync: false`). An agent on a virtio-serial
   * port that had no client reads the port only every 100 ms (qemu-ga sleeps
   * between reads while the host end is closed), so whatever request comes first
   * waits for that read: without the sync, that is one round trip less a connection.
   * A connection held from an earlier call (`hold`) has no such wait.
   */
  static async connect(path: string, opts: QgaConnectOptions = {}): Promise<QgaClient> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    const qga = new QgaClient(openAgentLink(path, timeoutMs, opts.hold), path, timeoutMs, deadline);
    if (opts.sync === false) return qga;
    try {
      await qga.sync(Math.max(1, deadline - Date.now()));
    } catch (e) {
      qga.close();
      throw e;
    }
    return qga;
  }

  get closed(): boolean {
    return this.closedError !== null;
  }

  /**
   * Resynchronise: a 0xFF byte resets the agent's JSON parser, then
   * guest-sync with a random id; every reply before the matching one is stale.
   */
  sync(timeoutMs: number = this.timeoutMs): Promise<void> {
    return this.resync(timeoutMs).then(() => undefined);
  }

  /** sync's request; with `late`, the reply to that earlier request is taken too, should it come first. */
  private resync(timeoutMs: number, late?: string): Promise<JsonObject> {
    // Only unlike earlier ids on the channel, not secret (the guest writes every reply anyway):
    // no node:crypto, which costs a call ~2.5 ms to load.
    const id = 1 + Math.floor(Math.random() * (2 ** 31 - 1));
    this.resetPending = true;
    const match = (msg: JsonObject): boolean => msg.return === id || (late !== undefined && msg.id === late);
    return this.enqueue('guest-sync', timeoutMs, match, () => this.write({ execute: 'guest-sync', arguments: { id } }));
  }

  async ping(timeoutMs?: number): Promise<void> {
    await this.execute('guest-ping', undefined, timeoutMs);
  }

  networkGetInterfaces(timeoutMs?: number): Promise<GuestNetworkInterface[]> {
    return this.execute<GuestNetworkInterface[]>('guest-network-get-interfaces', undefined, timeoutMs);
  }

  /** Run a program in the guest (PATH is searched) and collect its output. Non-zero exit is not an error. */
  async exec(path: string, args: readonly string[] = [], opts: GuestExecOptions = {}): Promise<GuestExecResult> {
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const deadline = Date.now() + timeoutMs;
    const left = () => Math.max(1, deadline - Date.now());
    const req: JsonObject = { path, arg: [...args], 'capture-output': true };
    if (opts.input !== undefined) req['input-data'] = Buffer.from(opts.input).toString('base64');
    if (opts.env) req.env = opts.env;
    // The agent answers guest-exec once it has read the request and started the program:
    // a big input (a restore's) takes its time to get there.
    // A request's time: the client's, at least a poll's least.
    const requestMs = Math.max(this.timeoutMs, POLL_REPLY_MS);
    const sendMs = requestMs + Math.ceil(String(req['input-data'] ?? '').length / EXEC_BYTES_PER_MS);
    const { pid } = await this.checkedRequest<{ pid: number }>('guest-exec', req, Math.min(left(), sendMs)).catch((e: unknown) => {
      if (e instanceof LostReply) throw new OcinetError('EEXEC', `guest exec ${path} ${args.join(' ')}: the agent's reply to guest-exec was lost; the program may be running in the guest`);
      throw e;
    });
    // The agent cannot say when a program ends, so it is polled: each time after
    // half the time the program has run so far (the agent replies once it has
    // started it), within POLL_MIN_MS..POLL_MAX_MS. A long program is seen at most
    // ~50% late, and the polls grow with the log of its run time: each one costs
    // the guest CPU (1-3 ms under TCG), taken from the program polled. (A poll at
    // once would find nothing: the reply to guest-exec took longer than most
    // programs that could have ended since.) With an expected run time, the
    // same rule counts from just before it, and the first poll goes there: a
    // program as fast as last time is seen a few ms late after one or two polls.
    const expect = opts.expectMs !== undefined && opts.expectMs > 0 ? opts.expectMs : undefined;
    const from = expect !== undefined ? expect * EXPECT_EARLY : 0;
    const minGap = expect !== undefined ? Math.min(POLL_MIN_MS, Math.max(2, expect / 16)) : POLL_MIN_MS;
    const started = Date.now();
    let lost = 0;
    for (let delay = Math.min(Math.max(from, minGap), left()); ; ) {
      await new Promise((r) => setTimeout(r, delay));
      const sent = Date.now() - started;
      // A poll sent just before the deadline still gets time for its reply; one whose reply
      // went missing costs a request's time, not the rest of the exec's, and is asked again:
      // the agent forgets a program only once it has reported its end (the reply lost, then).
      const replyMs = Math.min(Math.max(left(), POLL_REPLY_MS), requestMs);
      const st = await this.checkedRequest<ExecStatus>('guest-exec-status', { pid }, replyMs).catch((e: unknown) => {
        if (e instanceof LostReply) return undefined;
        if (lost > 0 && e instanceof QgaCommandError) {
          throw new ExitUnknown('EEXEC', `guest exec ${path} ${args.join(' ')}: guest pid ${pid} ended, but the agent's reply saying so was lost (its exit status is unknown)`);
        }
        throw e;
      });
      if (st === undefined) {
        if (++lost > MAX_LOST_POLLS || Date.now() >= deadline) {
          throw new OcinetError('EEXEC', `guest exec ${path} ${args.join(' ')}: no reply to ${lost} status polls of guest pid ${pid}, though the agent answers a resync`);
        }
        delay = 0;
        continue;
      }
      if (st.exited) {
        const out = decoded(st['out-data'], opts.maxStdout ?? MAX_STDOUT, st['out-truncated']);
        const err = decoded(st['err-data'], opts.maxStderr ?? MAX_STDERR, st['err-truncated']);
        const exitcode = st.exitcode ?? (st.signal !== undefined ? 128 + st.signal : -1);
        return {
          exitcode,
          ...(st.signal !== undefined && { signal: st.signal }),
          stdout: out.text,
          stderr: err.text,
          stdoutCut: out.cut,
          stderrCut: err.cut,
          ranMs: sent,
        };
      }
      delay = Math.min(POLL_MAX_MS, Math.max(minGap, (Date.now() - started - from) / 2));
      if (Date.now() + delay >= deadline) {
        throw new OcinetError('EEXEC', `guest exec ${path} ${args.join(' ')}: still running after ${timeoutMs} ms (guest pid ${pid})`);
      }
    }
  }

  /**
   * A request whose reply, should it not come within `replyMs`, is told apart from a
   * lost one: a resync follows, and the agent answers in order, so a reply that was only
   * late comes before the resync's and is taken. The resync's 0xFF goes out after the
   * whole request (one stream, in order), so it cuts no request short, and it clears a
   * parser somehow left mid-request. A reply lost while the agent still answers is a
   * LostReply; an agent that answers neither, one line saying so.
   */
  private async checkedRequest<T>(command: string, args: JsonObject, replyMs: number): Promise<T> {
    const id = this.newId();
    try {
      return await this.request<T>(command, args, id, replyMs);
    } catch (e) {
      if (!(e instanceof ReplyTimeout)) throw e;
    }
    const msg = await this.resync(replyMs, id).catch((e: unknown) => {
      if (!(e instanceof ReplyTimeout)) throw e;
      throw new OcinetError('EEXEC', `guest agent stopped answering: no reply to ${command} within ${replyMs} ms, nor to a resync after it within ${replyMs} ms`);
    });
    if (msg.id !== id) throw new LostReply('EEXEC', `guest agent ${command}: its reply was lost (the agent answers a resync)`);
    return QgaClient.returned<T>(command, msg);
  }

  /**
   * A guest file, whole, through guest-file-open/read/close: no process is
   * started in the guest (what a /proc file needs, cheaper than exec'ing a
   * reader). At most `maxBytes` (default: run()'s stdout cap); a larger file
   * is an error, never returned cut. Agent errors (no such file) are QgaCommandError.
   */
  async readFile(path: string, opts: { maxBytes?: number; timeoutMs?: number } = {}): Promise<Buffer> {
    const max = opts.maxBytes ?? MAX_STDOUT;
    const deadline = Date.now() + (opts.timeoutMs ?? this.timeoutMs);
    const left = () => Math.max(1, deadline - Date.now());
    const handle = await this.execute<number>('guest-file-open', { path, mode: 'r' }, left());
    try {
      const parts: Buffer[] = [];
      let len = 0;
      for (;;) {
        const r = await this.execute<{ count: number; 'buf-b64'?: string; eof: boolean }>('guest-file-read', { handle, count: READ_CHUNK }, left());
        const b = Buffer.from(r['buf-b64'] ?? '', 'base64');
        len += b.length;
        if (len > max) throw new OcinetError('EEXEC', `guest file ${path}: larger than ${max} bytes, not read`);
        parts.push(b);
        if (r.eof || b.length === 0) return Buffer.concat(parts, len);
      }
    } finally {
      // Nothing waits for the close: the next request follows it on the channel.
      this.post('guest-file-close', { handle });
    }
  }

  /** Any agent command; resolves with its `return`, rejects with QgaCommandError on `error`. */
  execute<T = unknown>(command: string, args?: JsonObject, timeoutMs: number = this.timeoutMs): Promise<T> {
    return this.request<T>(command, args, this.newId(), timeoutMs);
  }

  private async request<T>(command: string, args: JsonObject | undefined, id: string, timeoutMs: number): Promise<T> {
    const msg = await this.enqueue(command, timeoutMs, (m) => m.id === id, () => this.write(args ? { execute: command, arguments: args, id } : { execute: command, id }));
    return QgaClient.returned<T>(command, msg);
  }

  private static returned<T>(command: string, msg: JsonObject): T {
    const err = msg.error as { class?: string; desc?: string } | undefined;
    if (err) throw new QgaCommandError(command, err.class ?? 'GenericError', err.desc ?? JSON.stringify(err));
    return msg.return as T; // the caller names the shape of the command's return
  }

  /** Send a request in its turn without waiting for the reply (dropped as it comes): clean-ups only. */
  private post(command: string, args: JsonObject): void {
    const id = this.newId();
    const send = (): void => {
      if (!this.closedError) this.write({ execute: command, arguments: args, id });
    };
    this.queue = this.queue.then(send, send);
  }

  private newId(): string {
    return `ocinet-${this.tag}-${this.nextId++}`;
  }

  /** One request line, after the 0xFF parser reset when one is due. */
  private write(req: JsonObject): void {
    const line = JSON.stringify(req) + '\n';
    if (!this.resetPending) return void this.link.sock.write(line);
    this.resetPending = false;
    this.link.sock.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(line)]));
  }

  close(): void {
    // Worth keeping: the agent answered on it and nothing is left waiting for a reply.
    const state: AgentLinkState = this.unanswered || this.waiter !== null ? 'stuck' : this.heard && !this.closedError ? 'answered' : 'unasked';
    this.fail(`guest agent connection ${this.path} closed by us`);
    this.link.end(state);
  }

  /** One request at a time: send, then wait for the first message `match` accepts. */
  private enqueue(command: string, timeoutMs: number, match: (m: JsonObject) => boolean, send: () => void): Promise<JsonObject> {
    // The deadline counts from the call, so time spent queued counts too.
    const deadline = Date.now() + timeoutMs;
    const run = (): Promise<JsonObject> =>
      new Promise<JsonObject>((resolve, reject) => {
        if (this.closedError) return reject(this.closedError);
        if (Date.now() >= deadline) return reject(new OcinetError('EEXEC', `guest agent ${command}: no turn within ${timeoutMs} ms`));
        // An agent that has not answered yet gets connect's deadline, whatever the request;
        // once it has answered anything, the request's own.
        let timer: NodeJS.Timeout;
        const arm = (): void => {
          const silent = !this.heard && this.answerBy < deadline;
          timer = setTimeout(() => {
            if (silent && this.heard) return arm();
            this.waiter = null;
            this.unanswered = true;
            reject(silent ? agentSilent(this.path, this.timeoutMs) : new ReplyTimeout('EEXEC', `guest agent ${command}: no reply within ${timeoutMs} ms`));
          }, Math.max(0, (silent ? this.answerBy : deadline) - Date.now()));
        };
        arm();
        this.waiter = {
          command,
          accept: (m) => {
            if (!match(m)) return false;
            this.unanswered = false;
            clearTimeout(timer);
            resolve(m);
            return true;
          },
          reject: (e) => {
            clearTimeout(timer);
            reject(e);
          },
        };
        send();
      });
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  /**
   * A message over MAX_LINE was dropped as it streamed in: the request waiting
   * fails now (its reply may be that line) rather than at its timeout. The
   * reader resumes at the next newline, so the connection stays usable.
   */
  private dropped(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.reject(new OcinetError('EEXEC', `guest agent ${w.command}: reply over ${MAX_LINE} bytes, not read (a guest program's output too large?)`));
  }

  private fail(message: string): void {
    if (this.closedError) return;
    this.closedError = new OcinetError('EEXEC', message);
    this.waiter?.reject(this.closedError);
    this.waiter = null;
  }
}
