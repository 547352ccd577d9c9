/** The one error type of ocinet: a stable code for programs, a one-line message for people. */
export type ErrorCode =
  | 'EINPUT' // bad state JSON, flag, annotation or file
  | 'ECONFLICT' // address, port or name already taken
  | 'EEXHAUSTED' // no free address left in the pool
  | 'ENOTFOUND' // container, process or interface not there
  | 'ESELFNS' // pid shares the hook's own network namespace
  | 'EEXEC' // an external program failed
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

/** One line for stderr, whatever was thrown. */
export function errorLine(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  return msg.replace(/\s*\n\s*/g, '; ').trim();
}
