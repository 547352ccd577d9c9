/**
 * `ocinet ipvs ...`: kata-runtime kata-ipvs's commands. stdout carries
 * ipvsadm's own output; errors are one line on stderr and exit 1. Written
 * with printSync: process.stdout / stderr would cost a call ~1 ms to make.
 */
import { readFileSync } from 'node:fs';
import { errorLine, OcinetError } from '../core/base/errors.js';
import { ipvsadm, ipvsCleanup, ipvsRestore } from '../core/kata/ipvs.js';
import { parseCleanup, parseParameters, parseRestore } from '../core/input/ipvs-rules.js';
import { parseArgs, type FlagSpec } from './args.js';
import { printSync } from './stdio.js';
import { namedDirectly, SANDBOX_FLAGS, SANDBOX_USAGE, stateDirOf, targetFrom, type SandboxFlags } from './sandbox-flags.js';

const FLAGS: FlagSpec = {
  ...SANDBOX_FLAGS,
  '--parameters': { key: 'parameters', kind: 'string' },
  '--restore': { key: 'restore', kind: 'string' },
};

interface Flags extends SandboxFlags {
  parameters?: string;
  restore?: string;
}

export const IPVS_USAGE = `usage: ocinet ipvs COMMAND [CONTAINER-ID] [flags]
  ipvsadm --parameters "<ipvsadm args>" ID   add/edit/delete service or server, --list, --set T F U, --clear
  ipvsadm --restore - ID                     rules (-A/-a lines) on stdin, into an empty table, one exec
  cleanup --parameters "--orig-dst IP --protonum tcp|udp" ID   delete matching conntrack entries
flags:
${SANDBOX_USAGE}`;

export async function ipvsCommand(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === '--help' || cmd === 'help') {
    printSync(IPVS_USAGE + '\n');
    return cmd === undefined ? 1 : 0;
  }
  try {
    const { flags, positional } = parseArgs<Flags>(rest, FLAGS);
    if (positional.length > 1) throw new OcinetError('EINPUT', `unexpected argument '${positional[1]}'`);
    const id = positional[0];
    if (!id && !namedDirectly(flags)) throw new OcinetError('EINPUT', 'missing container id (or --netns / --pid / --qmp --qga)');
    const stateDir = stateDirOf(flags);
    if (cmd === 'ipvsadm') {
      if ((flags.parameters === undefined) === (flags.restore === undefined)) {
        throw new OcinetError('EINPUT', 'ipvsadm takes either --parameters "..." or --restore -');
      }
      if (flags.restore !== undefined) {
        if (flags.restore !== '-') throw new OcinetError('EINPUT', `--restore takes '-' (rules on stdin), got '${flags.restore}'`);
        const rules = parseRestore(readFileSync(0, 'utf8')); // validate before finding the sandbox
        for (const w of rules.warnings) printSync(`ocinet ipvs: warning: ${w}\n`, 2);
        await ipvsRestore(await targetFrom(flags, id, stateDir), rules, stateDir);
        return 0;
      }
      const rule = parseParameters(flags.parameters!);
      const out = await ipvsadm(await targetFrom(flags, id, stateDir), rule, stateDir);
      if (out) printSync(out);
      return 0;
    }
    if (cmd === 'cleanup') {
      if (flags.parameters === undefined) throw new OcinetError('EINPUT', 'cleanup takes --parameters "--orig-dst IP --protonum tcp|udp"');
      const spec = parseCleanup(flags.parameters);
      const said = await ipvsCleanup(await targetFrom(flags, id, stateDir), spec);
      if (said) printSync(said + '\n');
      return 0;
    }
    throw new OcinetError('EINPUT', `unknown ipvs command '${cmd}' (ipvsadm, cleanup)`);
  } catch (e) {
    printSync(`ocinet ipvs ${cmd}: ${errorLine(e)}\n`, 2);
    return 1;
  }
}
