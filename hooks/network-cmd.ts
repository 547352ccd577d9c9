/**
 * `ocinet network ...`: kata-runtime kata-network's contract. Success prints
 * the JSON result; failure prints `null` (del-iface: the interface that could
 * not be removed) on stdout and one line on stderr, and exits 1.
 */
import { readFileSync } from 'node:fs';
import { errorLine, OcinetError } from '../core/base/errors.js';
import { addIface, addRoutes, delIface, delRoutes, listIfaces } from '../core/kata/network.js';
import { parseIface, parseIfaceName, parseRoutes, type IfaceOutput } from '../core/input/iface.js';
import { reservedLink } from '../core/sandbox/claim.js';
import { parseJson } from '../core/base/validate.js';
import { parseArgs, type FlagSpec } from './args.js';
import { printSync } from './stdio.js';
import { namedDirectly, SANDBOX_FLAGS, SANDBOX_USAGE, stateDirOf, targetFrom, type SandboxFlags } from './sandbox-flags.js';

const FLAGS: FlagSpec = { ...SANDBOX_FLAGS, '--bridge': { key: 'bridge', kind: 'string' } };

interface Flags extends SandboxFlags {
  bridge?: string;
}

export const NETWORK_USAGE = `usage: ocinet network COMMAND [CONTAINER-ID] [FILE|-] [flags]
  add-iface   ID FILE|-   add an interface (kata-network JSON)      prints the interface
  del-iface   ID FILE|-   remove the interface with that "name"     prints null
  list-ifaces ID          interfaces added through these commands   prints [{name,mac,ip,mtu}] or null
  add-route   ID FILE|-   add a route or an array of routes         prints the routes
  del-route   ID FILE|-   delete every route matching the fields    prints the routes deleted
flags:
${SANDBOX_USAGE}
  --bridge NAME         add-iface: attach a created veth's host end to this bridge
On failure: null (del-iface: the interface) on stdout, the reason on stderr, exit 1.`;

const COMMANDS = ['add-iface', 'del-iface', 'list-ifaces', 'add-route', 'del-route'] as const;
type Command = (typeof COMMANDS)[number];

function readInput(arg: string | undefined): unknown {
  if (arg === undefined) throw new OcinetError('EINPUT', 'missing input file (a path, or - for stdin)');
  let text: string;
  try {
    text = readFileSync(arg === '-' ? 0 : arg, 'utf8');
  } catch (e) {
    throw new OcinetError('EINPUT', `cannot read ${arg}: ${(e as Error).message}`);
  }
  return parseJson(text, arg === '-' ? 'input on stdin' : arg);
}

export async function networkCommand(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === '--help' || cmd === 'help') {
    printSync(NETWORK_USAGE + '\n');
    return cmd === undefined ? 1 : 0;
  }
  let raw: unknown;
  try {
    if (!(COMMANDS as readonly string[]).includes(cmd)) {
      throw new OcinetError('EINPUT', `unknown network command '${cmd}' (${COMMANDS.join(', ')})`);
    }
    const { flags, positional } = parseArgs<Flags>(rest, FLAGS);
    const takesFile = cmd !== 'list-ifaces';
    const direct = namedDirectly(flags);
    // With --netns/--pid the id is optional: a lone positional is then the file.
    const [id, file] = direct && takesFile && positional.length === 1 ? [undefined, positional[0]] : [positional[0], positional[1]];
    const max = takesFile ? 2 : 1;
    if (positional.length > max) throw new OcinetError('EINPUT', `unexpected argument '${positional[max]}'`);
    const stateDir = stateDirOf(flags);
    if (takesFile) raw = readInput(file);
    // Validate the input before looking for the sandbox: a bad file is the first thing to report.
    const c = cmd as Command;
    const iface = c === 'add-iface' ? parseIface(raw) : undefined;
    const name = c === 'del-iface' ? parseIfaceName(raw) : undefined;
    const routes = c === 'add-route' || c === 'del-route' ? parseRoutes(raw, c === 'add-route') : undefined;
    const t = await targetFrom(flags, id, stateDir);
    let out: unknown;
    switch (c) {
      case 'add-iface':
        out = await addIface(t, iface!, { stateDir, reserved: reservedLink(stateDir), ...(flags.bridge ? { bridge: flags.bridge } : {}) });
        break;
      case 'del-iface':
        await delIface(t, name!, stateDir);
        out = null;
        break;
      case 'list-ifaces':
        out = await listIfaces(t, stateDir);
        break;
      case 'add-route':
        out = await addRoutes(t, routes!, stateDir);
        break;
      case 'del-route':
        out = await delRoutes(t, routes!, stateDir);
        break;
    }
    printSync(JSON.stringify(out) + '\n');
    return 0;
  } catch (e) {
    // kata: failure prints null, except del-iface, which prints the interface that failed.
    let failed: unknown = null;
    if (cmd === 'del-iface') failed = (e as { iface?: IfaceOutput }).iface ?? (raw && typeof raw === 'object' ? raw : null);
    printSync(JSON.stringify(failed) + '\n');
    printSync(`ocinet network ${cmd}: ${errorLine(e)}\n`, 2);
    return 1;
  }
}
