/** Runs a precompiled schema validator and turns its first error into one readable line. */
import { OcinetError } from './errors.js';
import type { Validator } from '../generated/validators.js';

/** Plain words for the patterns our schemas use. */
const FRIENDLY: Record<string, string> = {
  '^[A-Za-z][A-Za-z0-9_.-]{0,14}$': 'must be 1-15 characters: a letter, then letters, digits, _ - .',
  '^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$': 'must be a MAC address like 02:42:20:6f:a3:69',
};

export function check<T>(validator: Validator, data: unknown, what: string): T {
  if (validator(data)) return data as T;
  const e = validator.errors?.[0];
  if (!e) throw new OcinetError('EINPUT', `${what}: invalid`);
  // `/0/mtu` → `what[0] field 'mtu'`: array positions stay with the thing they index.
  const segs = e.instancePath ? e.instancePath.slice(1).split('/') : [];
  let index = '';
  while (segs.length && /^\d+$/.test(segs[0]!)) index += `[${segs.shift()}]`;
  const where = segs.map((x) => (/^\d+$/.test(x) ? `[${x}]` : x)).join('.').replace(/\.\[/g, '[');
  let msg = e.message ?? 'is invalid';
  if (e.keyword === 'required') msg = `missing required field '${String(e.params.missingProperty)}'`;
  else if (e.keyword === 'additionalProperties') msg = `unknown field '${String(e.params.additionalProperty)}'`;
  else if (e.keyword === 'pattern' && FRIENDLY[String(e.params.pattern)]) msg = FRIENDLY[String(e.params.pattern)]!;
  else if (e.keyword === 'enum') msg = `must be one of ${(e.params.allowedValues as unknown[]).join(', ')}`;
  throw new OcinetError('EINPUT', `${what}${index}${where ? ` field '${where}'` : ''}: ${msg}`);
}

/** Parse JSON; `echo` false keeps the text out of the error (V8 quotes a piece of it). */
export function parseJson(text: string, what: string, echo = true): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new OcinetError('EINPUT', `${what} is not valid JSON${echo ? `: ${(e as Error).message}` : ''}`);
  }
}
