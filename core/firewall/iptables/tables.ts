/**
 * A typed wrapper around iptables-restore/iptables-save. Rule changes are
 * collected into one restore script and applied in one exec (`--noflush`:
 * only chains we declare are flushed). Rules live in chains ocinet owns.
 */
import { OcinetError } from '../../base/errors.js';
import { run } from '../../base/exec.js';

export type Table = 'nat' | 'filter';

export interface Rule {
  table: Table;
  chain: string;
  /** Match and target arguments, as they would follow `-A CHAIN`. */
  args: string[];
}

const SAFE = /^[A-Za-z0-9_.:/,!+=-]+$/;
function quote(a: string): string {
  if (SAFE.test(a)) return a;
  if (/["\n\\]/.test(a)) throw new OcinetError('EINPUT', `iptables argument ${JSON.stringify(a)} cannot be quoted`);
  return `"${a}"`;
}

export function ruleLine(op: '-A' | '-D' | '-I', r: Rule): string {
  return [op, r.chain, ...r.args].map(quote).join(' ');
}

/** Builds one iptables-restore script across tables. */
export class RestoreScript {
  private readonly lines = new Map<Table, string[]>();

  private t(table: Table): string[] {
    let l = this.lines.get(table);
    if (!l) this.lines.set(table, (l = []));
    return l;
  }
  /** Create the chain, or flush it if it exists. */
  chain(table: Table, chain: string): this {
    this.t(table).unshift(`:${chain} - [0:0]`);
    return this;
  }
  append(r: Rule): this {
    this.t(r.table).push(ruleLine('-A', r));
    return this;
  }
  insert(r: Rule): this {
    this.t(r.table).push(ruleLine('-I', r));
    return this;
  }
  delete(r: Rule): this {
    this.t(r.table).push(ruleLine('-D', r));
    return this;
  }
  /** A raw `-D ...` line as printed by iptables-save with -A swapped. */
  deleteSaved(table: Table, saveLine: string): this {
    this.t(table).push('-D' + saveLine.slice(2));
    return this;
  }
  flush(table: Table, chain: string): this {
    this.t(table).push(`-F ${chain}`);
    return this;
  }
  deleteChain(table: Table, chain: string): this {
    this.t(table).push(`-X ${chain}`);
    return this;
  }
  get empty(): boolean {
    return [...this.lines.values()].every((l) => l.length === 0);
  }
  text(): string {
    let out = '';
    for (const [table, lines] of this.lines) {
      if (lines.length) out += `*${table}\n${lines.join('\n')}\nCOMMIT\n`;
    }
    return out;
  }
}

/** Apply a script atomically (per table). */
export async function restore(script: RestoreScript, allowFail = false): Promise<boolean> {
  if (script.empty) return true;
  const r = await run('iptables-restore', ['-w', '5', '--noflush'], { input: script.text(), allowFail });
  return r.code === 0;
}

export interface SavedTable {
  chains: Set<string>;
  /** `-A CHAIN ...` lines as iptables-save prints them. */
  rules: string[];
}

export async function save(table: Table): Promise<SavedTable> {
  const r = await run('iptables-save', ['-t', table]);
  const chains = new Set<string>();
  const rules: string[] = [];
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith(':')) chains.add(line.slice(1).split(' ')[0]!);
    else if (line.startsWith('-A ')) rules.push(line);
  }
  return { chains, rules };
}

/** The chain a saved `-A CHAIN ...` line belongs to. */
export function savedChain(line: string): string {
  return line.split(' ')[1]!;
}

/** A saved line's words, as iptables-save quotes them (`"..."`, with `\"` and `\\` escaped). */
export function savedWords(line: string): string[] {
  const out: string[] = [];
  let i = 0;
  while (i < line.length) {
    if (line[i] === ' ') {
      i++;
      continue;
    }
    let w = '';
    if (line[i] === '"') {
      for (i++; i < line.length && line[i] !== '"'; i++) w += line[i] === '\\' && i + 1 < line.length ? line[++i] : line[i];
      i++;
    } else {
      for (; i < line.length && line[i] !== ' '; i++) w += line[i];
    }
    out.push(w);
  }
  return out;
}

/** The comment of a saved rule (`-m comment --comment X`), or undefined: the tag, compared whole. */
export function savedComment(line: string): string | undefined {
  const w = savedWords(line);
  const i = w.indexOf('--comment');
  return i >= 0 ? w[i + 1] : undefined;
}

/** The target of a saved `... -j TARGET` rule, compared whole. */
export function savedTarget(line: string): string | undefined {
  const w = savedWords(line);
  const i = w.lastIndexOf('-j');
  return i >= 0 ? w[i + 1] : undefined;
}

/** True when a saved line is a jump from `chain` to `target`. */
export function isJump(line: string, chain: string, target: string): boolean {
  return savedChain(line) === chain && savedTarget(line) === target;
}

/**
 * Remove, by listing what is there, every rule `match` selects and the given
 * chains (when present). The slow, sure path: used when exact deletes fail
 * (half-done setups, crashes) and by gc.
 */
export async function purge(tables: Table[], match: (line: string) => boolean, chains: (c: string) => boolean): Promise<number> {
  const script = new RestoreScript();
  let n = 0;
  for (const table of tables) {
    const saved = await save(table);
    for (const line of saved.rules) {
      if (match(line) || chains(savedChain(line))) {
        script.deleteSaved(table, line);
        n++;
      }
    }
    for (const c of saved.chains) if (chains(c)) script.deleteChain(table, c);
  }
  await restore(script);
  return n;
}
