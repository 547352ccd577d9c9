/**
 * The state directory must be root's: the hook runs as root and trusts what
 * it finds there (records name links and rules to delete, the lock lives
 * there). So every component from `/` down must be one only root can change:
 * owned by root and not group/other writable, except a root-owned sticky dir
 * such as /tmp above it (there a user cannot rename or delete root's entries).
 * Symlinks on the way are followed by hand, and must be root's too. The dir
 * itself is root's, not group/other writable, and is created 0700.
 */
import { lstatSync, mkdirSync, readlinkSync, type Stats } from 'node:fs';
import { dirname, join } from 'node:path';
import { OcinetError } from '../base/errors.js';

const STICKY = 0o1000;
const GROUP_OTHER_WRITE = 0o022;

const FIX = 'use a state dir owned by root, mode 0700, under dirs only root can change (default /run/ocinet)';

export interface StateDirCheck {
  /** Why the dir cannot be used (one line), or null. */
  problem: string | null;
  /** How to fix it. */
  fix?: string;
  /** Null when the dir does not exist yet. */
  stat: Stats | null;
}

function lstatOrNull(p: string): Stats | null {
  try {
    return lstatSync(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

function writableByOthers(st: Stats): boolean {
  return (st.mode & GROUP_OTHER_WRITE) !== 0;
}

function loose(path: string, st: Stats): string {
  return `${path} is ${(st.mode & 0o7777).toString(8).padStart(4, '0')}: writable by ${st.mode & 0o002 ? 'others' : 'its group'}`;
}

/** Check `dir` without changing anything: one lstat per path component. */
export function inspectStateDir(dir: string): StateDirCheck {
  if (!dir.startsWith('/')) return { problem: `state dir '${dir}' must be an absolute path`, stat: null };
  const refuse = (why: string, fix = FIX): StateDirCheck => ({ problem: `state dir ${dir} refused: ${why}`, fix, stat: null });
  const rootSt = lstatSync('/');
  if (rootSt.uid !== 0 || writableByOthers(rootSt)) return refuse(`/ is not root's alone`);
  const parts = dir.split('/').filter((p) => p !== '' && p !== '.');
  let cur = '/';
  let curSt = rootSt;
  let hops = 0;
  while (parts.length) {
    const name = parts.shift()!;
    if (name === '..') {
      // cur is a real path whose every prefix was checked already.
      cur = dirname(cur);
      curSt = lstatSync(cur);
      continue;
    }
    const next = join(cur, name);
    const st = lstatOrNull(next);
    if (!st) {
      // Missing: created later by root, so nobody else may be able to create it first.
      if (writableByOthers(curSt)) return refuse(`${next} does not exist and ${cur} is writable by others, who could make it first`, `mkdir -m 0700 ${dir} as root first, or ${FIX}`);
      return { problem: null, stat: null };
    }
    if (st.isSymbolicLink()) {
      if (st.uid !== 0) return refuse(`symlink ${next} is owned by uid ${st.uid}`);
      if (++hops > 40) return refuse('too many symlinks');
      const target = readlinkSync(next);
      parts.unshift(...target.split('/').filter((p) => p !== '' && p !== '.'));
      if (target.startsWith('/')) {
        cur = '/';
        curSt = rootSt;
      }
      continue;
    }
    if (!st.isDirectory()) return refuse(`${next} is not a directory`);
    if (st.uid !== 0) return refuse(`${next} is owned by uid ${st.uid}, not root`);
    // On the way, a sticky dir is fine (checked again below if it turns out to be the last).
    if (writableByOthers(st) && !(st.mode & STICKY)) return refuse(loose(next, st));
    cur = next;
    curSt = st;
  }
  if (writableByOthers(curSt)) return refuse(loose(cur, curSt));
  return { problem: null, stat: curSt };
}

/** Refuse a state dir a non-root user could change (one line, nothing touched). */
export function checkStateDir(dir: string): void {
  const { problem, fix } = inspectStateDir(dir);
  if (problem) throw new OcinetError('ESTATE', `${problem} (fix: ${fix})`);
}

/** Check the state dir, create it (0700) when missing, and check what is there then. */
export function useStateDir(dir: string): void {
  const first = inspectStateDir(dir);
  if (first.problem) throw new OcinetError('ESTATE', `${first.problem} (fix: ${first.fix})`);
  if (first.stat) return;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  checkStateDir(dir);
}
