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
import { guestRun } from '../vm/hotplug.js';
import { loadRecord, saveRecord, type Target } from './records.js';

// ---- running in a sandbox ----

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

const GUEST_BIN: Record<string, string> = { ipvsadm: '/usr/sbin/ipvsadm', conntrack: '/usr/sbin/conntrack' };

async function runIn(t: Target, prog: 'ipvsadm' | 'conntrack', args: string[], input?: string, timeoutMs = 120_000): Promise<Ran> {
  if (t.vm) {
    const r = await guestRun(t.vm, GUEST_BIN[prog]!, args, { ...(input !== undefined ? { input } : {}), timeoutMs });
    return { code: r.exitcode, stdout: r.stdout, stderr: r.stderr };
  }
  if (prog === 'ipvsadm' && !existsSync('/proc/net/ip_vs')) {
    throw new OcinetError('EKERNEL', 'this kernel has no IP_VS (no /proc/net/ip_vs): ipvsadm cannot work in container sandboxes here; load ip_vs or use a VM sandbox');
  }
  return run('nsenter', [`--net=${t.nsPath}`, '--', prog, ...args], { allowFail: true, timeoutMs, ...(input !== undefined ? { input } : {}) });
}

function failed(prog: string, r: Ran): OcinetError {
  const why = (r.stderr || r.stdout).trim().split('\n').slice(-2).join('; ') || `exit ${r.code}`;
  if (/Protocol not available/.test(why)) return new OcinetError('EKERNEL', `${prog}: the sandbox's kernel has no IP_VS (${why})`);
  return new OcinetError('EEXEC', `${prog}: ${why}`);
}

/** Services + real servers in the sandbox's table: /proc/net/ip_vs has 3 header lines. */
export async function countRules(t: Target): Promise<number> {
  if (t.vm) {
    const r = await guestRun(t.vm, '/bin/busybox', ['wc', '-l', '/proc/net/ip_vs']);
    if (r.exitcode !== 0) throw new OcinetError('EKERNEL', `the guest has no IP_VS table (${r.stderr.trim()})`);
    return Math.max(0, Number(r.stdout.trim().split(/\s+/)[0]) - 3);
  }
  const r = await run('nsenter', [`--net=${t.nsPath}`, '--', 'wc', '-l', '/proc/net/ip_vs'], { allowFail: true });
  if (r.code !== 0) throw new OcinetError('EKERNEL', 'this kernel has no IP_VS (no /proc/net/ip_vs): load ip_vs or use a VM sandbox');
  return Math.max(0, Number(r.stdout.trim().split(/\s+/)[0]) - 3);
}

async function recordCount(t: Target, stateDir: string, n: number): Promise<void> {
  const rec = loadRecord(stateDir, t);
  rec.ipvsRules = n;
  saveRecord(stateDir, rec);
}

/** One ipvsadm command. Returns ipvsadm's output (the listing for -L). */
export async function ipvsadm(t: Target, rule: IpvsRule, stateDir: string): Promise<string> {
  return withSandboxLock(stateDir, t.key, async () => {
    // The kernel's count, not only ours: it cannot drift from what is really there.
    if (rule.command === 'add-service' || rule.command === 'add-server') {
      const before = await countRules(t);
      if (before >= MAX_RULES) throw new OcinetError('ECONFLICT', `rule limit ${MAX_RULES} reached: the sandbox has ${before} rules`);
    }
    const r = await runIn(t, 'ipvsadm', rule.argv);
    if (r.code !== 0) throw failed('ipvsadm', r);
    // list and --set leave the table as it is; the rest change what it holds.
    if (rule.command !== 'list' && rule.command !== 'set') await recordCount(t, stateDir, await countRules(t));
    return r.stdout;
  });
}

/** Batch restore: only into an empty table, within the limit, in one exec. */
export async function ipvsRestore(t: Target, parsed: RestoreSet, stateDir: string): Promise<void> {
  await withSandboxLock(stateDir, t.key, async () => {
    const before = await countRules(t);
    if (before > 0) throw new OcinetError('ECONFLICT', `restore refused: the sandbox already has ${before} rules (clear them first)`);
    // The table was empty: emptying it again undoes the rules that got in before a failure,
    // also when the call itself failed (a timeout, a reply over the agent's cap).
    const undo = (): Promise<unknown> => runIn(t, 'ipvsadm', ['-C']).catch(() => undefined);
    const r = await runIn(t, 'ipvsadm', ['--restore'], parsed.text, 600_000).catch(async (e: unknown) => {
      await undo();
      throw e;
    });
    if (r.code !== 0) {
      await undo();
      throw failed('ipvsadm --restore', r);
    }
    // Into an empty table, all lines accepted: the count is known. Reading it back
    // would make the guest format its whole 20000-entry /proc/net/ip_vs again.
    await recordCount(t, stateDir, parsed.rules.length);
  });
}

/** conntrack -D for the original destination; "0 flow entries have been deleted" is success (kata does so). */
export async function ipvsCleanup(t: Target, spec: CleanupSpec): Promise<string> {
  const r = await runIn(t, 'conntrack', ['-D', '--orig-dst', spec.origDst, '--protonum', spec.protonum]);
  const said = `${r.stdout}\n${r.stderr}`;
  if (r.code !== 0 && !/have been deleted/.test(said)) throw failed('conntrack', r);
  return (said.match(/.*have been deleted.*/)?.[0] ?? '').trim();
}
