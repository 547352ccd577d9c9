/** Runs a precompiled schema validator and turns its first error into one readable line. */
import { OcinetError } from './errors.js';
import type { Validator } from './generated/validators.js';

export function check<T>(validator: Validator, data: unknown, what: string): T {
  if (validator(data)) return data as T;
  const e = validator.errors?.[0];
  if (!e) throw new OcinetError('EINPUT', `${what}: invalid`);
  const where = e.instancePath ? e.instancePath.slice(1).replace(/\//g, '.') : '';
  let msg = e.message ?? 'is invalid';
  if (e.keyword === 'required') msg = `missing required field '${String(e.params.missingProperty)}'`;
  else if (e.keyword === 'additionalProperties') msg = `unknown field '${String(e.params.additionalProperty)}'`;
  else if (e.keyword === 'enum') msg = `must be one of ${(e.params.allowedValues as unknown[]).join(', ')}`;
  throw new OcinetError('EINPUT', `${what}${where ? ` field '${where}'` : ''}: ${msg}`);
}

export function parseJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new OcinetError('EINPUT', `${what} is not valid JSON: ${(e as Error).message}`);
  }
}
