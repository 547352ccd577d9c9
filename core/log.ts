/** Operations and their timings as JSON lines in a log file (one append per hook run). */
import { appendFileSync } from 'node:fs';

export interface LogEntry {
  op: string;
  id?: string;
  ok: boolean;
  ms: number;
  error?: string;
  code?: string;
  [k: string]: unknown;
}

export class OpLog {
  private readonly steps: Record<string, number> = {};
  private readonly t0 = performance.now();
  private last = this.t0;
  constructor(
    private readonly file: string | null,
    /** Where warnings go besides the log (the hook: one stderr line each). */
    private readonly onWarn?: (line: string) => void,
  ) {}

  /** Something was wrong but repaired (a damaged state file or record): logged and shown. */
  warn(message: string): void {
    this.write({ op: 'warning', ok: true, warning: message });
    this.onWarn?.(message);
  }

  /** Record how long the step that just finished took. */
  step(name: string): void {
    const now = performance.now();
    this.steps[name] = Math.round((now - this.last) * 100) / 100;
    this.last = now;
  }

  elapsed(): number {
    return Math.round((performance.now() - this.t0) * 100) / 100;
  }

  write(entry: Omit<LogEntry, 'ms'>): void {
    if (!this.file) return;
    const line = { ts: new Date().toISOString(), ...entry, ms: this.elapsed(), steps: this.steps };
    try {
      appendFileSync(this.file, JSON.stringify(line) + '\n');
    } catch {
      /* logging must never fail a hook */
    }
  }
}
