/**
 * Operations and their timings as JSON lines in a log file (one append per
 * hook run). The file is bounded: an entry is at most MAX_ENTRY bytes, and
 * a file past MAX_LOG is renamed to FILE.1 (one generation kept) before the
 * next append, so the log never holds more than about 2 × MAX_LOG.
 */
import { appendFileSync, renameSync, statSync } from 'node:fs';
import { clip, errorLine } from '../base/errors.js';

/** Largest log line (bytes, about: strings are clipped to fit). */
export const MAX_ENTRY = 8 * 1024;
/** Rotate when the file has grown past this. */
export const MAX_LOG = 1024 * 1024;
/** Longest string value in an entry that had to be shrunk. */
const MAX_FIELD = 400;

export interface LogEntry {
  op: string;
  id?: string;
  ok: boolean;
  ms: number;
  error?: string;
  code?: string;
  [k: string]: unknown;
}

/** Milliseconds on a monotonic clock: process.hrtime, as `performance` would load perf_hooks (~0.9 ms of a hook run). */
function now(): number {
  const [sec, ns] = process.hrtime();
  return sec * 1e3 + ns / 1e6;
}

export class OpLog {
  private readonly steps: Record<string, number> = {};
  private readonly t0 = now();
  private last = this.t0;
  constructor(
    private readonly file: string | null,
    /** Where warnings go besides the log (the hook: one stderr line each). */
    private readonly onWarn?: (line: string) => void,
  ) {}

  /** Something was wrong but repaired (a damaged state file or record): logged and shown. */
  warn(message: string): void {
    // One short line, as errors are: a warning may quote program output.
    const line = errorLine(message);
    this.write({ op: 'warning', ok: true, warning: line });
    this.onWarn?.(line);
  }

  /** Record how long the step that just finished took. */
  step(name: string): void {
    const t = now();
    this.steps[name] = Math.round((t - this.last) * 100) / 100;
    this.last = t;
  }

  elapsed(): number {
    return Math.round((now() - this.t0) * 100) / 100;
  }

  write(entry: Omit<LogEntry, 'ms'>): void {
    if (!this.file) return;
    try {
      appendLine(this.file, boundedLine({ ts: new Date().toISOString(), ...entry, ms: this.elapsed(), steps: this.steps }));
    } catch {
      /* logging must never fail a hook */
    }
  }
}

/** The entry as one JSON line of at most ~MAX_ENTRY bytes, its fields and format kept. */
export function boundedLine(entry: Record<string, unknown>): string {
  const whole = JSON.stringify(entry);
  if (whole.length <= MAX_ENTRY) return whole + '\n';
  // Clip every long string, at any depth (an error, a warning, a name list).
  const shrink = (v: unknown): unknown => {
    if (typeof v === 'string') return clip(v, MAX_FIELD);
    if (Array.isArray(v)) return v.length > 20 ? [...v.slice(0, 20).map(shrink), `…[${v.length - 20} more]`] : v.map(shrink);
    if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, shrink(x)]));
    return v;
  };
  const small = JSON.stringify({ ...(shrink(entry) as Record<string, unknown>), clipped: true });
  if (small.length <= MAX_ENTRY) return small + '\n';
  // Still too big (thousands of keys): what the readers rely on, nothing else.
  const { ts, op, id, ok, ms, code } = entry;
  return JSON.stringify({ ts, op, ...(typeof id === 'string' && { id: clip(id, MAX_FIELD) }), ok, ms, ...(code !== undefined && { code }), steps: {}, clipped: true }) + '\n';
}

/** Append one line, rotating first when the file has passed MAX_LOG (one stat, no read). */
export function appendLine(file: string, line: string, maxLog: number = MAX_LOG): void {
  const size = statSync(file, { throwIfNoEntry: false })?.size ?? 0;
  if (size >= maxLog) {
    try {
      // Two hooks may both rotate: the second renames a short new file over .1; lines are lost, none is torn.
      renameSync(file, `${file}.1`);
    } catch {
      /* another hook rotated it first */
    }
  }
  appendFileSync(file, line, { mode: 0o600 });
}
