/** The OCI container state a runtime hands its hooks, and the annotations that come with it. */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { OcinetError } from '../base/errors.js';
import { join } from 'node:path';
import { validateBundleConfig, validateOciState } from '../generated/validators.js';
import { check, parseJson } from '../base/validate.js';

export interface OciState {
  ociVersion: string;
  id: string;
  status: 'creating' | 'created' | 'running' | 'stopped' | 'starting' | 'paused';
  pid?: number;
  bundle: string;
  annotations?: Record<string, string>;
}

export function parseState(text: string): OciState {
  if (text.trim() === '') return check<OciState>(validateOciState, undefined, 'state on stdin (empty)');
  return check<OciState>(validateOciState, parseJson(text, 'state on stdin'), 'state');
}

/** runc/crun: prestart and createRuntime see creating/created/starting; poststop sees stopped. */
export function stageFromStatus(s: OciState): 'setup' | 'teardown' {
  return s.status === 'stopped' ? 'teardown' : 'setup';
}

export const ANNOTATION_PREFIX = 'io.ocinet.';

/**
 * Our annotations: the state's when it carries any of ours, else the bundle's
 * config.json (runtimes that omit annotations from the state).
 */
export function ocinetAnnotations(s: OciState): Record<string, string> {
  const pick = (a: Record<string, string> | undefined): Record<string, string> | null => {
    if (!a) return null;
    const out: Record<string, string> = {};
    let any = false;
    for (const [k, v] of Object.entries(a)) {
      if (k.startsWith(ANNOTATION_PREFIX)) {
        out[k] = v;
        any = true;
      }
    }
    return any ? out : null;
  };
  const fromState = pick(s.annotations);
  if (fromState) return fromState;
  if (s.annotations !== undefined || !s.bundle) return {};
  const file = join(s.bundle, 'config.json');
  const text = readBundleFile(file);
  if (text === null) return {}; // no bundle config to read: no per-container requests
  const cfg = check<{ annotations?: Record<string, string> }>(validateBundleConfig, parseJson(text, file, false), file);
  return pick(cfg.annotations) ?? {};
}

/** More than any runtime's config.json; the hook reads only its annotations. */
export const BUNDLE_CONFIG_MAX_BYTES = 4 << 20;

/**
 * The bundle's config.json is the container user's file: read it only when it
 * is a regular file (no symlink, FIFO or device: O_NOFOLLOW and O_NONBLOCK,
 * then fstat), up to a size cap, and never put its content in an error.
 * Null when there is none.
 */
function readBundleFile(file: string): string | null {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    if (code === 'ELOOP') throw new OcinetError('EINPUT', `${file} is a symlink; the hook reads only a regular file there`);
    throw new OcinetError('EINPUT', `cannot open ${file}: ${code ?? 'error'}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new OcinetError('EINPUT', `${file} is not a regular file`);
    if (st.size > BUNDLE_CONFIG_MAX_BYTES) throw new OcinetError('EINPUT', `${file} is ${st.size} bytes, more than the ${BUNDLE_CONFIG_MAX_BYTES} the hook reads`);
    const buf = Buffer.alloc(st.size);
    let got = 0;
    while (got < st.size) {
      const n = readSync(fd, buf, got, st.size - got, got);
      if (n === 0) break;
      got += n;
    }
    return buf.subarray(0, got).toString('utf8');
  } finally {
    closeSync(fd);
  }
}
