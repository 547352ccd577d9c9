/**
 * kata-ipvs input: ipvsadm parameters, restore sets and cleanup specs, with
 * openEuler's validation. Everything is checked here, before anything runs.
 */
import { OcinetError } from '../base/errors.js';
import { isIPv4 } from '../base/cidr.js';

export const MAX_RULES = 20000;
export const SCHEDULERS = ['rr', 'wrr', 'lc', 'wlc', 'lblc', 'lblcr', 'dh', 'sh', 'sed', 'nq'];
const MAX_PERSISTENT = 2678400;
const MAX_TIMEOUT = 1296000;

export type IpvsCommand = 'add-service' | 'edit-service' | 'delete-service' | 'add-server' | 'edit-server' | 'delete-server' | 'list' | 'set' | 'clear';

export interface IpvsRule {
  command: IpvsCommand;
  /** ipvsadm's arguments, normalised to short options. */
  argv: string[];
  warnings: string[];
}

const COMMANDS: Record<string, IpvsCommand> = {
  '-A': 'add-service', '--add-service': 'add-service',
  '-E': 'edit-service', '--edit-service': 'edit-service',
  '-D': 'delete-service', '--delete-service': 'delete-service',
  '-a': 'add-server', '--add-server': 'add-server',
  '-e': 'edit-server', '--edit-server': 'edit-server',
  '-d': 'delete-server', '--delete-server': 'delete-server',
  '-L': 'list', '-l': 'list', '--list': 'list',
  '--set': 'set',
  '-C': 'clear', '--clear': 'clear',
};
const SHORT: Record<string, string> = {
  '--tcp-service': '-t', '--udp-service': '-u', '--scheduler': '-s', '--persistent': '-p',
  '--real-server': '-r', '--weight': '-w', '--masquerading': '-m', '--gatewaying': '-g', '--ipip': '-i', '--numeric': '-n',
};
const SHORT_CMD: Record<IpvsCommand, string> = {
  'add-service': '-A', 'edit-service': '-E', 'delete-service': '-D', 'add-server': '-a', 'edit-server': '-e',
  'delete-server': '-d', list: '-L', set: '--set', clear: '-C',
};
/** Options each command takes (besides the command itself). */
const ALLOWED: Record<IpvsCommand, string[]> = {
  'add-service': ['-t', '-u', '-s', '-p'],
  'edit-service': ['-t', '-u', '-s', '-p'],
  'delete-service': ['-t', '-u'],
  'add-server': ['-t', '-u', '-r', '-w', '-m', '-g', '-i'],
  'edit-server': ['-t', '-u', '-r', '-w', '-m', '-g', '-i'],
  'delete-server': ['-t', '-u', '-r'],
  list: ['-n', '-t', '-u'],
  set: [],
  clear: [],
};
const FLAGS = new Set(['-m', '-g', '-i', '-n']);

function bad(reason: string): OcinetError {
  return new OcinetError('EINPUT', `invalid input of IPVS rule: ${reason}`);
}

function endpoint(v: string | undefined, opt: string): string {
  const m = v === undefined ? null : /^(\d+\.\d+\.\d+\.\d+):(\d{1,5})$/.exec(v);
  if (!m || !isIPv4(m[1]!)) throw bad(`${opt} needs IPv4 ip:port, got '${v ?? ''}'`);
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw bad(`port ${port} in '${v}' is outside 1-65535`);
  return v!;
}

function int(v: string | undefined, opt: string, min: number, max: number): string {
  if (v === undefined || !/^\d+$/.test(v) || Number(v) < min || Number(v) > max) throw bad(`${opt} takes a whole number from ${min} to ${max}, got '${v ?? ''}'`);
  return String(Number(v));
}

/** Validate one ipvsadm argument list (`--parameters`, or one line of a restore file). */
export function parseRule(tokens: string[], where = ''): IpvsRule {
  const at = where ? `${where}: ` : '';
  const wrap = (e: unknown): never => {
    throw e instanceof OcinetError && where ? bad(`${at}${e.message.replace('invalid input of IPVS rule: ', '')}`) : e;
  };
  try {
    if (tokens.length === 0) throw bad('no command');
    const cmdTok = tokens[0]!;
    const command = COMMANDS[cmdTok];
    if (!command) throw bad(`'${cmdTok}' is not an ipvsadm command this interface takes`);
    const argv = [SHORT_CMD[command]];
    const seen = new Map<string, string | true>();
    const warnings: string[] = [];
    if (command === 'set') {
      const vals = tokens.slice(1);
      if (vals.length !== 3) throw bad(`--set takes three values (tcp tcpfin udp), got ${vals.length}`);
      vals.forEach((v, i) => argv.push(int(v, `--set ${['tcp', 'tcpfin', 'udp'][i]}`, 0, MAX_TIMEOUT)));
      return { command, argv, warnings };
    }
    for (let i = 1; i < tokens.length; i++) {
      const tok = tokens[i]!;
      const opt = SHORT[tok] ?? tok;
      if (!ALLOWED[command].includes(opt)) throw bad(`option '${tok}' is not allowed with ${cmdTok}`);
      if (seen.has(opt)) throw bad(`option '${tok}' given twice`);
      if (FLAGS.has(opt)) {
        seen.set(opt, true);
        continue;
      }
      const v = tokens[++i];
      let value: string;
      switch (opt) {
        case '-t': case '-u': case '-r': value = endpoint(v, tok); break;
        case '-s':
          if (!v || !SCHEDULERS.includes(v)) throw bad(`scheduler '${v ?? ''}' is not one of ${SCHEDULERS.join(' ')}`);
          value = v;
          break;
        case '-p': value = int(v, tok, 1, MAX_PERSISTENT); break;
        case '-w': value = int(v, tok, 0, 65535); break;
        default: throw bad(`option '${tok}' is not allowed`);
      }
      seen.set(opt, value);
    }
    if (seen.has('-t') && seen.has('-u')) throw bad('give either a tcp or a udp service, not both');
    const needsService = command !== 'list' && command !== 'clear';
    if (needsService && !seen.has('-t') && !seen.has('-u')) throw bad(`${cmdTok} needs --tcp-service or --udp-service`);
    if (command.endsWith('-server') && !seen.has('-r')) throw bad(`${cmdTok} needs --real-server`);
    const methods = ['-m', '-g', '-i'].filter((m) => seen.has(m));
    if (methods.length > 1) throw bad(`choose one forwarding method, not ${methods.join(' ')}`);
    for (const [opt, value] of seen) {
      argv.push(opt);
      if (value !== true) argv.push(value);
    }
    if ((command === 'add-server' || command === 'edit-server') && methods.length === 0) {
      if (where) warnings.push(`${at}no forwarding method: ipvsadm will use direct routing (-g); write -m for NAT`);
      else argv.push('-m'); // a single add/edit-server defaults to NAT, as kata-ipvs does
    }
    return { command, argv, warnings };
  } catch (e) {
    return wrap(e);
  }
}

/** Split `--parameters` text into tokens: whitespace only, no shell, no quotes. */
export function tokens(text: string): string[] {
  return text.trim().split(/\s+/).filter(Boolean);
}

export function parseParameters(text: string): IpvsRule {
  return parseRule(tokens(text));
}

/** A validated restore file: its rules, the normalised text for ipvsadm, and warnings. */
export interface RestoreSet {
  rules: IpvsRule[];
  text: string;
  warnings: string[];
}

/** A restore file: only -A/-a lines, each validated. */
export function parseRestore(text: string, where = 'restore input'): RestoreSet {
  const rules: IpvsRule[] = [];
  text.split('\n').forEach((line, n) => {
    if (line.trim() === '' || line.trim().startsWith('#')) return;
    const r = parseRule(tokens(line), `${where} line ${n + 1}`);
    if (r.command !== 'add-service' && r.command !== 'add-server') {
      throw bad(`${where} line ${n + 1}: only -A and -a lines can be restored, got '${tokens(line)[0]}'`);
    }
    rules.push(r);
  });
  if (rules.length === 0) throw bad(`${where} is empty`);
  if (rules.length > MAX_RULES) throw bad(`${where} has ${rules.length} rules, more than the ${MAX_RULES} a sandbox may hold`);
  return { rules, text: rules.map((r) => r.argv.join(' ')).join('\n') + '\n', warnings: rules.flatMap((r) => r.warnings) };
}

export interface CleanupSpec {
  origDst: string;
  protonum: 'tcp' | 'udp';
}

export function parseCleanup(text: string): CleanupSpec {
  const t = tokens(text);
  const spec: Partial<CleanupSpec> = {};
  for (let i = 0; i < t.length; i++) {
    const tok = t[i]!;
    const v = t[++i];
    if (tok === '--orig-dst') {
      if (!v || !isIPv4(v)) throw bad(`--orig-dst needs an IPv4 address, got '${v ?? ''}'`);
      spec.origDst = v;
    } else if (tok === '--protonum') {
      if (v !== 'tcp' && v !== 'udp') throw bad(`--protonum must be tcp or udp, got '${v ?? ''}'`);
      spec.protonum = v;
    } else throw bad(`option '${tok}' is not allowed with cleanup (only --orig-dst and --protonum)`);
  }
  if (!spec.origDst || !spec.protonum) throw bad('cleanup needs --orig-dst IP and --protonum tcp|udp');
  return spec as CleanupSpec;
}
