/**
 * Naming a process so the kernel cannot hand the name to another: a pid is
 * reused at once, a pid plus its start time (/proc/PID/stat field 22, clock
 * ticks since boot) never is. Plain /proc reads, no exec: liveness checks
 * run for every record that stands in a setup's way.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

/**
 * Field 22 of /proc/PID/stat, or null when there is no such process. A zombie
 * (state Z or X) counts as none: it has exited, only its parent has not
 * reaped it yet (a daemonized QEMU under a parent that never reaps).
 */
export function startTime(pid: number): number | null {
  if (!Number.isInteger(pid) || pid <= 0) return null;
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // comm (field 2) may hold spaces and parentheses: count from the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  if (fields[0] === 'Z' || fields[0] === 'X') return null;
  const v = Number(fields[19]); // field 22 is the 20th after comm
  return Number.isFinite(v) ? v : null;
}

/** True while `pid` is the same process that had start time `start` (no start recorded: the pid alone). */
export function sameProcess(pid: number | undefined, start: number | undefined): boolean {
  if (!pid) return false;
  const now = startTime(pid);
  return now !== null && (start === undefined || now === start);
}

/**
 * The process listening on unix socket `path` in the caller's network
 * namespace (/proc/net/unix is per namespace), or null. Scans /proc/PID/fd,
 * QEMU-named processes first: it runs once per VM sandbox setup.
 */
export function socketOwner(path: string): number | null {
  let inode = '';
  try {
    for (const line of readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      // Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 is a listening socket.
      if (f[7] === path && (parseInt(f[3] ?? '0', 16) & 0x10000) !== 0) inode = f[6]!;
    }
  } catch {
    return null;
  }
  if (!inode) return null;
  const want = `socket:[${inode}]`;
  const pids = readdirSync('/proc').filter((d) => /^\d+$/.test(d));
  const comm = (p: string): string => {
    try {
      return readFileSync(`/proc/${p}/comm`, 'utf8');
    } catch {
      return '';
    }
  };
  const ordered = [...pids.filter((p) => comm(p).includes('qemu')), ...pids];
  for (const p of ordered) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${p}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${p}/fd/${fd}`) === want) return Number(p);
      } catch {
        /* closed meanwhile */
      }
    }
  }
  return null;
}
