/** The OCI container state a runtime hands its hooks, and the annotations that come with it. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { validateBundleConfig, validateOciState } from './generated/validators.js';
import { check, parseJson } from './validate.js';

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
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return {}; // no bundle config to read: no per-container requests
  }
  const cfg = check<{ annotations?: Record<string, string> }>(validateBundleConfig, parseJson(text, file), file);
  return pick(cfg.annotations) ?? {};
}
