/**
 * A hook's, plugin's or command's stdio, synchronous: stdin read whole and
 * bounded, output written at once. runc may hand non-blocking pipes, and
 * process.stdout would first load Node's stream machinery (and net, for a
 * pipe), ~2.5 ms of a hook run or --version that needs nothing else.
 */
import { readSync, writeSync } from 'node:fs';
import { OcinetError } from '../core/base/errors.js';

/** A non-blocking pipe that is empty (or full): wait a little, do not spin. */
const pause = (): void => void Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);

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
        pause();
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

/** Writes text to stdout (or `fd`) at once. */
export function printSync(text: string, fd = 1): void {
  const buf = Buffer.from(text);
  for (let off = 0; off < buf.length; ) {
    try {
      off += writeSync(fd, buf, off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') {
        if (fd === 2) return; // a closed stderr loses a message, never the run
        throw e;
      }
      pause();
    }
  }
}
