/** The one error type of ocinet: a stable code for programs, a one-line message for people. */
export type ErrorCode =
  | 'EINPUT' // bad state JSON, flag, annotation or file
  | 'ECONFLICT' // address, port or name already taken
  | 'EEXHAUSTED' // no free address left in the pool
  | 'ENOTFOUND' // container, process or interface not there
  | 'ESELFNS' // pid shares the hook's own network namespace
  | 'EEXEC' // an external program, or a request to the kernel (rtnetlink, libnftables), failed
  | 'ELOCK' // could not take the state lock in time
  | 'ESTATE' // the state file is unreadable
  | 'EDAMAGED' // the state file cannot be parsed (rebuilt from the kernel's objects)
  | 'EKERNEL'; // the kernel lacks something we need

export class OcinetError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.code = code;
    this.name = 'OcinetError';
  }
}

export function isOcinetError(e: unknown): e is OcinetError {
  return e instanceof OcinetError;
}

/** Longest error line ocinet prints or logs. */
export const ERROR_LINE_MAX = 400;

/**
 * At most `max` chars: the head and the tail, with what was cut between
 * counted (the start says what failed, the end usually why). `flat` is
 * applied to the two ends only, so a 20 MB text is never scanned whole.
 */
export function clip(text: string, max: number = ERROR_LINE_MAX, flat: (s: string) => string = (s) => s): string {
  if (text.length <= 4 * max) {
    const f = flat(text);
    if (f.length <= max) return f;
    text = f;
  }
  // The marker takes at most 30 chars (a 17-digit count).
  const room = Math.max(0, max - 30);
  const head = flat(text.slice(0, 2 * Math.ceil(room / 2))).slice(0, Math.ceil(room / 2));
  const tailLen = room - Math.ceil(room / 2);
  const tail = tailLen > 0 ? flat(text.slice(-2 * tailLen)).slice(-tailLen) : '';
  return `${head}…[${text.length - head.length - tail.length} chars cut]…${tail}`;
}

/** One short line for stderr and the log, whatever was thrown. */
export function errorLine(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  return clip(msg.trim(), ERROR_LINE_MAX, (s) => s.replace(/\s*\n\s*/g, '; '));
}
