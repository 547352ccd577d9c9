/**
 * ocinet-hook: the OCI runtime hook. Reads the container state on stdin;
 * `setup` or `teardown` (default: from the state's status) a bridge network.
 * Exit 0 on success; on failure one line on stderr and exit 1.
 */
import { resolveConfig, type HookFlags } from '../core/input/config.js';
import { errorLine, isOcinetError, OcinetError } from '../core/base/errors.js';
import { OpLog } from '../core/state/log.js';
import { ocinetAnnotations, parseState, stageFromStatus } from '../core/input/oci.js';
import { setupContainer } from '../core/sandbox/container.js';
import { teardownContainer } from '../core/sandbox/teardown.js';
import { parseArgs, type FlagSpec } from './args.js';
import { printSync, readStdin } from './stdio.js';
import { VERSION } from './version.js';

const FLAGS: FlagSpec = {
  '--bridge': { key: 'bridge', kind: 'string' },
  '--subnet': { key: 'subnet', kind: 'string' },
  '--iface': { key: 'iface', kind: 'string' },
  '--mtu': { key: 'mtu', kind: 'string' },
  '--publish': { key: 'publish', kind: 'list' },
  '--ip': { key: 'ip', kind: 'string' },
  '--state-dir': { key: 'stateDir', kind: 'string' },
  '--log': { key: 'log', kind: 'string' },
  '--keep-bridge': { key: 'keepBridge', kind: 'bool' },
  '--mode': { key: 'mode', kind: 'string' },
  '--qmp': { key: 'qmp', kind: 'string' },
  '--qga': { key: 'qga', kind: 'string' },
  '--allow-host-device': { key: 'allowHostDevice', kind: 'list' },
  '--annotation-device-prefix': { key: 'annotationDevicePrefix', kind: 'string' },
  '--allow-vm-sockets': { key: 'allowVmSockets', kind: 'list' },
  '--publish-range': { key: 'publishRange', kind: 'string' },
  '--allow-spoofing': { key: 'allowSpoofing', kind: 'bool' },
  '--firewall': { key: 'firewall', kind: 'string' },
  '--subnet6': { key: 'subnet6', kind: 'string' },
  '--help': { key: 'help', kind: 'bool' },
  '--version': { key: 'version', kind: 'bool' },
};

const USAGE = `usage: ocinet-hook [setup|teardown] [flags] < state.json
  Without a stage, 'stopped' state means teardown, anything else setup.
  --bridge NAME        bridge to attach to (default ocinet0)
  --subnet CIDR        bridge subnet; gateway is its first address (default 10.213.0.0/16)
  --subnet6 CIDR       dual stack: the bridge's IPv6 subnet (/64 to /120; nftables backend);
                       annotation io.ocinet.ip6 asks for a static address in it
  --iface NAME         interface name in the container (default eth0)
  --mtu N              MTU of the veth pair (default 1500)
  --publish [HOSTIP:]H[-H2]:C[-C2][/tcp|/udp]  publish container port C on host port H
                       (repeatable; only on HOSTIP when given; ranges of equal length)
  --ip ADDR            static address (annotation io.ocinet.ip wins)
  --state-dir DIR      state and leases (default $OCINET_STATE_DIR or /run/ocinet)
  --log FILE|none      JSON-lines operation log (default STATE_DIR/ocinet.log)
  --keep-bridge        keep bridge and NAT rules when the last container leaves
  --firewall auto|nftables|iptables  backend of a new network (default auto: nftables when
                       nft works and iptables' FORWARD policy is not DROP); a network keeps its own
  --mode veth|tap      veth: a container's netns (default); tap: a QEMU VM sandbox
  --qmp SOCKET         tap mode: QEMU's QMP socket (annotation io.ocinet.qmp wins)
  --qga SOCKET         tap mode: the guest agent's socket (annotation io.ocinet.qga wins)
  --allow-spoofing     let containers send from any MAC and address (default: only their own;
                       router advertisements and redirects from containers are dropped either way)
What annotations (the container user's) may ask for; the defaults are safe for shared hosts:
  --allow-host-device PATTERN   host devices io.ocinet.interfaces may move in (repeatable, * globs; default none)
  --annotation-device-prefix P  host devices io.ocinet.interfaces creates must start with P (default ocx)
  --allow-vm-sockets DIR        io.ocinet.qmp/qga may name sockets below DIR (repeatable; default only
                                /run/vc/vm/ID/ and /run/ocinet/vm/ID/ of the container's own id)
  --publish-range LO-HI         host ports io.ocinet.publish may take (default 1024-65535; --publish is not limited)
  --version, --help`;

/** The state on stdin carries the container's annotations (each capped): a bound for the whole. */
const STATE_MAX_BYTES = 8 << 20;

async function main(argv: string[]): Promise<number> {
  const { flags, positional } = parseArgs<HookFlags & { help?: boolean; version?: boolean }>(argv, FLAGS);
  if (flags.version) {
    printSync(`ocinet-hook ${VERSION}\n`);
    return 0;
  }
  if (flags.help) {
    printSync(USAGE + '\n');
    return 0;
  }
  const stageArg = positional[0];
  if (positional.length > 1 || (stageArg !== undefined && stageArg !== 'setup' && stageArg !== 'teardown')) {
    throw new OcinetError('EINPUT', `unexpected argument '${positional.join(' ')}' (stage is setup or teardown)`);
  }
  const state = parseState(readStdin(STATE_MAX_BYTES));
  const stage = stageArg ?? stageFromStatus(state);
  const cfg = resolveConfig(flags, stage === 'setup' ? ocinetAnnotations(state) : {}, process.env);
  const log = new OpLog(cfg.logFile, (w) => printSync(`ocinet-hook: warning: ${w}\n`, 2));
  try {
    if (stage === 'setup') {
      if (!state.pid && cfg.mode === 'veth') throw new OcinetError('EINPUT', `state field 'pid' is required for setup (status '${state.status}')`);
      const res = await setupContainer({ ...cfg, id: state.id, pid: state.pid ?? 0, bundle: state.bundle }, log);
      log.write({ op: 'setup', id: state.id, ok: true, ip: res.ip, ports: res.ports.length, shared: res.sharedWith });
      printSync(JSON.stringify(res) + '\n');
    } else {
      // Only the record this container made: another runtime may run one with the same id.
      const res = await teardownContainer(state.id, cfg, { bundle: state.bundle, ...(state.pid ? { pid: state.pid } : {}) }, log);
      log.write({ op: 'teardown', id: state.id, ok: true, removed: res.removed, bridgeRemoved: res.bridgeRemoved, ...(res.skipped ? { skipped: res.skipped } : {}) });
    }
  } catch (e) {
    log.write({ op: stage, id: state.id, ok: false, error: errorLine(e), code: isOcinetError(e) ? e.code : 'EUNKNOWN' });
    throw e;
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    printSync(`ocinet-hook: ${errorLine(e)}\n`, 2);
    process.exit(1);
  },
);
