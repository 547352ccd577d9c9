/** Reading a hook's or plugin's stdin whole, bounded (runc may hand a non-blocking pipe). */
import { readSync } from 'node:fs';
import { OcinetError } from '../core/base/errors.js';

/** All of stdin; more than `max` bytes is refused (`what` names it). */
export function readStdin(max: number, what = 'state on stdin'): string {
  const chunks: Buffer[] = [];
  const buf = Buffer.alloc(1 << 16);
  let total = 0;
  for (;;) {
    let n: number;
    try {
      n = readSync(0, buf, 0, buf.length, null);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5); // a non-blocking stdin: wait, do not spin
        continue;
      }
      if ((e as NodeJS.ErrnoException).code === 'EOF') break;
      throw e;
    }
    if (n === 0) break;
    total += n;
    if (total > max) throw new OcinetError('EINPUT', `${what} is larger than ${max} bytes`);
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(chunks).toString('utf8');
}
