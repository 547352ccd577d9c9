/**
 * The kata-ipvs operations: ipvsadm parameters, batch restore, conntrack
 * cleanup, validated first (input/ipvs-rules.ts). ipvsadm and conntrack get
 * their arguments as arrays, inside the sandbox (a container's namespace
 * through nsenter, a VM's guest through its agent). Rules are counted per
 * sandbox (services + servers) against a limit.
 */
import { existsSync } from 'node:fs';
import { OcinetError } from '../base/errors.js';
import { run } from '../base/exec.js';
import { MAX_RULES, type CleanupSpec, type IpvsRule, type RestoreSet } from '../input/ipvs-rules.js';
import { withSandboxLock } from '../state/lock.js';
import { withQga } from '../vm/hotplug.js';
import { ExitUnknown, QgaCommandError, type QgaClient } from '../vm/qga.js';
import { loadRecord, saveRecord, type Target } from './records.js';

// ---- running in a sandbox ----

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
  /** In a guest: how long it ran as the agent's polls saw it (GuestExecResult.ranMs). */
  ranMs?: number;
}

interface RunOptions {
  input?: string;
  timeoutMs?: number;
  /** In a guest: an earlier ranMs of the same kind of command (GuestExecOptions.expectMs). */
  expectMs?: number;
}

const GUEST_BIN: Record<string, string> = { ipvsadm: '/usr/sbin/ipvsadm', conntrack: '/usr/sbin/conntrack' };
const NO_IP_VS = 'this kernel has no IP_VS (no /proc/net/ip_vs)';

/** Where one operation's programs run: a container's namespace, or a VM's guest over one agent connection. */
interface Sandbox {
  run(prog: 'ipvsadm' | 'conntrack', args: string[], opts?: RunOptions): Promise<Ran>;
  /** Services + real servers in the sandbox's table: /proc/net/ip_vs has 3 header lines. */
  count(): Promise<number>;
}

const rulesIn = (lines: number): number => Math.max(0, lines - 3);
/** From `wc -l /proc/net/ip_vs`'s output. */
const rulesOfWc = (out: string): number => rulesIn(Number(out.trim().split(/\s+/)[0]));

function guestSandbox(qga: QgaClient): Sandbox {
  return {
    async run(prog, args, { timeoutMs = 120_000, ...opts } = {}) {
      const r = await qga.exec(GUEST_BIN[prog]!, args, { ...opts, timeoutMs });
      return { code: r.exitcode, stdout: r.stdout, stderr: r.stderr, ranMs: r.ranMs };
    },
    // Read through the agent, no process in the guest: at 20000 rules too it costs less
    // than `wc -l`, which stays for agents that have the file commands disabled.
    async count() {
      let text: Buffer;
      try {
        text = await qga.readFile('/proc/net/ip_vs', { timeoutMs: 60_000 });
      } catch (e) {
        if (!(e instanceof QgaCommandError)) throw e;
        if (e.errorClass !== 'CommandNotFound') throw new OcinetError('EKERNEL', `the guest has no IP_VS table (${e.message})`);
        const r = await qga.exec('/bin/busybox', ['wc', '-l', '/proc/net/ip_vs'], { timeoutMs: 60_000 });
        if (r.exitcode !== 0) throw new OcinetError('EKERNEL', `the guest has no IP_VS table (${r.stderr.trim()})`);
        return rulesOfWc(r.stdout);
      }
      let lines = 0;
      for (let i = text.indexOf(0x0a); i >= 0; i = text.indexOf(0x0a, i + 1)) lines++;
      return rulesIn(lines);
    },
  };
}

function nsSandbox(t: Target): Sandbox {
  return {
    async run(prog, args, { input, timeoutMs = 120_000 } = {}) {
      if (prog === 'ipvsadm' && !existsSync('/proc/net/ip_vs')) {
        throw new OcinetError('EKERNEL', `${NO_IP_VS}: ipvsadm cannot work in container sandboxes here; load ip_vs or use a VM sandbox`);
      }
      return run('nsenter', [`--net=${t.nsPath}`, '--', prog, ...args], { allowFail: true, timeoutMs, ...(input !== undefined ? { input } : {}) });
    },
    async count() {
      const r = await run('nsenter', [`--net=${t.nsPath}`, '--', 'wc', '-l', '/proc/net/ip_vs'], { allowFail: true });
      if (r.code !== 0) throw new OcinetError('EKERNEL', `${NO_IP_VS}: load ip_vs or use a VM sandbox`);
      return rulesOfWc(r.stdout);
    },
  };
}

/** `fn` with the sandbox: a VM's whole operation shares one agent connection (a held one, when t.agent says). */
function inSandbox<T>(t: Target, fn: (sb: Sandbox) => Promise<T>): Promise<T> {
  return t.vm ? withQga(t.vm, (qga) => fn(guestSandbox(qga)), t.agent) : fn(nsSandbox(t));
}

function failed(prog: string, r: Ran): OcinetError {
  const why = (r.stderr || r.stdout).trim().split('\n').slice(-2).join('; ') || `exit ${r.code}`;
  if (/Protocol not available/.test(why)) return new OcinetError('EKERNEL', `${prog}: the sandbox's kernel has no IP_VS (${why})`);
  return new OcinetError('EEXEC', `${prog}: ${why}`);
}

/** The record's rule count, and in a VM how long a one-entry command ran (the next one's polls start from it). */
function recordCount(t: Target, stateDir: string, n: number, ranMs?: number): void {
  const rec = loadRecord(stateDir, t);
  rec.ipvsRules = n;
  // A slow run (a busy host) raises the expectation by a quarter at most, a fast one lowers it at once.
  if (ranMs !== undefined) rec.ipvsadmMs = Math.round(Math.min(ranMs, (rec.ipvsadmMs ?? Infinity) * 1.25));
  saveRecord(stateDir, rec);
}

/** Commands that change one entry: their run time does not grow with the table, so the last one's predicts the next. */
const ONE_ENTRY = new Set<IpvsRule['command']>(['add-service', 'edit-service', 'delete-service', 'add-server', 'edit-server', 'delete-server']);

/** The sandbox's last one-entry run time, if its record has one (a record that does not read gives none here). */
function lastRunMs(t: Target, stateDir: string): number | undefined {
  try {
    return loadRecord(stateDir, t).ipvsadmMs;
  } catch {
    return undefined;
  }
}

/**
 * One ipvsadm command. Returns ipvsadm's output (the listing for -L). On a VM
 * that is one agent connection and one guest exec; an add also reads the
 * table's size before it (a file read through the agent, no exec).
 */
export async function ipvsadm(t: Target, rule: IpvsRule, stateDir: string): Promise<string> {
  return withSandboxLock(stateDir, t.key, async () => {
    const oneEntry = ONE_ENTRY.has(rule.command);
    const expectMs = t.vm && oneEntry ? lastRunMs(t, stateDir) : undefined;
    const done = await inSandbox(t, async (sb) => {
      // The kernel's count, not only ours: it cannot drift from what is really there.
      let before: number | undefined;
      if (rule.command === 'add-service' || rule.command === 'add-server') {
        before = await sb.count();
        if (before >= MAX_RULES) throw new OcinetError('ECONFLICT', `rule limit ${MAX_RULES} reached: the sandbox has ${before} rules`);
      }
      const r = await sb.run('ipvsadm', rule.argv, expectMs !== undefined ? { expectMs } : {});
      if (r.code !== 0) throw failed('ipvsadm', r);
      // list and --set leave the table as it is; the rest change what it holds. An
      // accepted add put exactly one entry into the table counted just before (under
      // the sandbox's lock) and a clear left none; edits and deletes are counted again.
      const changed = rule.command !== 'list' && rule.command !== 'set';
      const after = !changed ? undefined : before !== undefined ? before + 1 : rule.command === 'clear' ? 0 : await sb.count();
      return { out: r.stdout, after, ranMs: oneEntry ? r.ranMs : undefined };
    });
    // The agent connection is closed by now: the record is the host's alone.
    if (done.after !== undefined) recordCount(t, stateDir, done.after, done.ranMs);
    return done.out;
  });
}

/** Batch restore: only into an empty table, within the limit, in one exec. */
export async function ipvsRestore(t: Target, parsed: RestoreSet, stateDir: string): Promise<void> {
  await withSandboxLock(stateDir, t.key, () =>
    inSandbox(t, async (sb) => {
      const before = await sb.count();
      if (before > 0) throw new OcinetError('ECONFLICT', `restore refused: the sandbox already has ${before} rules (clear them first)`);
      // The table was empty: emptying it again undoes the rules that got in before a failure,
      // also when the call itself failed (a timeout, a reply over the agent's cap).
      const undo = (): Promise<unknown> => sb.run('ipvsadm', ['-C']).catch(() => undefined);
      const r = await sb.run('ipvsadm', ['--restore'], { input: parsed.text, timeoutMs: 600_000 }).catch(async (e: unknown) => {
        // Its end was reported in a reply that was lost: into an empty table, under the lock,
        // the kernel's count says whether every line got in.
        if (e instanceof ExitUnknown && (await sb.count().catch(() => -1)) === parsed.rules.length) return { code: 0, stdout: '', stderr: '' };
        await undo();
        throw e;
      });
      if (r.code !== 0) {
        await undo();
        throw failed('ipvsadm --restore', r);
      }
      // Into an empty table, all lines accepted: the count is known. Reading it back
      // would make the guest format its whole 20000-entry /proc/net/ip_vs again.
      recordCount(t, stateDir, parsed.rules.length);
    }),
  );
}

/** conntrack -D for the original destination; "0 flow entries have been deleted" is success (kata does so). */
export async function ipvsCleanup(t: Target, spec: CleanupSpec): Promise<string> {
  const r = await inSandbox(t, (sb) => sb.run('conntrack', ['-D', '--orig-dst', spec.origDst, '--protonum', spec.protonum]));
  const said = `${r.stdout}\n${r.stderr}`;
  if (r.code !== 0 && !/have been deleted/.test(said)) throw failed('conntrack', r);
  return (said.match(/.*have been deleted.*/)?.[0] ?? '').trim();
}
