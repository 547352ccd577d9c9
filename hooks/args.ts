/** A small typed argv parser: `--flag value`, `--flag=value`, repeatable and boolean flags. */
import { OcinetError } from '../core/base/errors.js';

export type FlagKind = 'string' | 'list' | 'bool';
export type FlagSpec = Record<string, { key: string; kind: FlagKind }>;

export interface Parsed<T> {
  flags: T;
  positional: string[];
}

export function parseArgs<T extends object>(argv: readonly string[], spec: FlagSpec): Parsed<T> {
  const flags: Record<string, unknown> = {};
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--') || a === '--') {
      if (a === '--') positional.push(...argv.slice(i + 1));
      else positional.push(a);
      if (a === '--') break;
      continue;
    }
    const eq = a.indexOf('=');
    const name = eq > 0 ? a.slice(0, eq) : a;
    const def = spec[name];
    if (!def) throw new OcinetError('EINPUT', `unknown flag ${name} (see --help)`);
    if (def.kind === 'bool') {
      if (eq > 0) throw new OcinetError('EINPUT', `flag ${name} takes no value`);
      flags[def.key] = true;
      continue;
    }
    let value: string | undefined;
    if (eq > 0) value = a.slice(eq + 1);
    else value = argv[++i];
    if (value === undefined) throw new OcinetError('EINPUT', `flag ${name} needs a value`);
    if (def.kind === 'list') {
      const list = (flags[def.key] as string[] | undefined) ?? [];
      list.push(value);
      flags[def.key] = list;
    } else flags[def.key] = value;
  }
  return { flags: flags as T, positional };
}

