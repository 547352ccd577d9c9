/**
 * ocinet-cni: the CNI plugin (type "ocinet"). The runtime's CNI_* variables
 * and the network configuration on stdin in; a result or the spec's error
 * JSON on stdout, exit 1 on error. `--version` and `--help` for people.
 */
import { errorLine } from '../core/base/errors.js';
import { runCni } from '../core/cni/plugin.js';
import { CniError, CNI_CODE, CNI_CONFIG_MAX_BYTES } from '../core/input/cni.js';
import { printSync, readStdin } from './stdio.js';
import { VERSION } from './version.js';

const USAGE = `usage: CNI_COMMAND=ADD|DEL|CHECK|VERSION|GC|STATUS CNI_CONTAINERID=... CNI_NETNS=... CNI_IFNAME=... ocinet-cni < config.json
  The CNI plugin of type "ocinet" (CNI spec 0.4.0, 1.0.0, 1.1.0): see docs/cni.md for its configuration.
  --version, --help`;

async function main(argv: string[]): Promise<number> {
  if (argv[0] === '--version' || argv[0] === '--help') {
    printSync(argv[0] === '--version' ? `ocinet-cni ${VERSION}\n` : USAGE + '\n');
    return 0;
  }
  const stdin = (): string => {
    try {
      return readStdin(CNI_CONFIG_MAX_BYTES, 'network configuration on stdin');
    } catch (e) {
      throw new CniError(CNI_CODE.decodingFailure, errorLine(e));
    }
  };
  const out = await runCni(process.env, stdin, (w) => printSync(`ocinet-cni: warning: ${w}\n`, 2));
  printSync(out.stdout);
  return out.exitCode;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    // Only a bug gets here (runCni answers every failure as CNI error JSON).
    printSync(JSON.stringify({ cniVersion: '1.1.0', code: 999, msg: errorLine(e) }) + '\n');
    process.exit(1);
  },
);
