/**
 * ocinet: the command line. `list`, `gc`, `reload`, `publish`, `unpublish`,
 * `doctor`, `network` and `ipvs`. Exit 0 on success, 1 on failure with one line on stderr.
 */
import { errorLine, OcinetError } from '../core/base/errors.js';
import type { Db } from '../core/state/store.js';
import { parseArgs, type FlagSpec } from './args.js';
import { printSync } from './stdio.js';
import { VERSION } from './version.js';

// Each command loads only what it uses (`ocinet ipvs` does not load netlink,
// the firewall backends or gc): a bundle's modules run when first imported.

const COMMON: FlagSpec = {
  '--state-dir': { key: 'stateDir', kind: 'string' },
  '--json': { key: 'json', kind: 'bool' },
  '--help': { key: 'help', kind: 'bool' },
  '--version': { key: 'version', kind: 'bool' },
};

interface Flags {
  stateDir?: string;
  json?: boolean;
  help?: boolean;
  version?: boolean;
}

const USAGE = `usage: ocinet COMMAND [flags]
  list [--json]      containers ocinet manages: id, address, published ports
  gc                 remove networks of containers whose namespace is gone, and orphans
  reload             put every network's and live container's rules back from the state
                     (after 'iptables -F', 'nft flush ruleset' or a firewall reload)
  publish ID SPEC[,SPEC...]    publish ports of a running container; SPEC is
                     [HOSTIP:]H[-H2]:C[-C2][/tcp|/udp] (e.g. 8080:80, 127.0.0.1:5353:53/udp)
  unpublish ID SPEC[,SPEC...]  take published ports of a running container away
  doctor             check programs and kernel features the hooks need
  network ...        kata-network operations: add-iface, del-iface, list-ifaces,
                     add-route, del-route (see 'ocinet network --help')
  ipvs ...           kata-ipvs operations: ipvsadm --parameters/--restore, cleanup
                     (see 'ocinet ipvs --help')
flags:
  --state-dir DIR    state directory (default $OCINET_STATE_DIR or /run/ocinet)
  --json             machine-readable output
  --version, --help`;

/** The state for reading only: a damaged file is reported, not rebuilt (gc does that). */
async function readState(stateDir: string): Promise<Db> {
  const { loadDb } = await import('../core/state/store.js');
  try {
    return loadDb(stateDir);
  } catch (e) {
    if (e instanceof OcinetError && e.code === 'EDAMAGED') {
      throw new OcinetError('EDAMAGED', `${e.message}: run 'ocinet gc' to rebuild it from the kernel's objects`);
    }
    throw e;
  }
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === '--version') return void printSync(`ocinet ${VERSION}\n`), 0;
  if (cmd === undefined || cmd === '--help' || cmd === 'help') return void printSync(USAGE + '\n'), 0;
  if (cmd === 'network') return (await import('./network-cmd.js')).networkCommand(rest);
  if (cmd === 'ipvs') return (await import('./ipvs-cmd.js')).ipvsCommand(rest);
  const { flags, positional } = parseArgs<Flags>(rest, COMMON);
  if (flags.help) return void printSync(USAGE + '\n'), 0;
  const { resolveStateDir, stateDirFrom } = await import('../core/input/config.js');
  const { OpLog } = await import('../core/state/log.js');
  if (cmd === 'publish' || cmd === 'unpublish') {
    const { formatPort, parsePortList } = await import('../core/firewall/ports.js');
    const { changePorts } = await import('../core/sandbox/publish.js');
    if (positional.length !== 2) throw new OcinetError('EINPUT', `usage: ocinet ${cmd} ID SPEC[,SPEC...]`);
    // The specs are checked before the state dir is touched.
    const specs = parsePortList(positional[1]!, cmd);
    const stateDir = resolveStateDir(flags.stateDir, process.env);
    const log = new OpLog(`${stateDir}/ocinet.log`, (w) => process.stderr.write(`ocinet ${cmd}: warning: ${w}\n`));
    const r = await changePorts(stateDir, positional[0]!, cmd, specs, log);
    if (flags.json) process.stdout.write(JSON.stringify({ id: r.id, ports: r.ports.map(formatPort) }, null, 2) + '\n');
    else process.stdout.write(`${r.id}: ${r.ports.map(formatPort).join(',') || '-'}\n`);
    return 0;
  }
  if (positional.length) throw new OcinetError('EINPUT', `unexpected argument '${positional[0]}' for ${cmd}`);
  // doctor reports on a refused state dir instead of failing on it.
  const stateDir = (cmd === 'doctor' ? stateDirFrom : resolveStateDir)(flags.stateDir, process.env);
  switch (cmd) {
    case 'list': {
      const db = await readState(stateDir);
      const [{ listLinks }, { isAlive }, { formatPort }] = await Promise.all([
        import('../core/net/links.js'),
        import('../core/admin/gc.js'),
        import('../core/firewall/ports.js'),
      ]);
      // The bridge each host veth hangs on (netlink, as gc reads links), to show the detached ones.
      const masters = new Map((await listLinks()).map((l) => [l.name, l.master ?? '']));
      const rows = Object.values(db.containers).map((c) => {
        const alive = isAlive(c);
        const detached = alive && c.mode === 'veth' && c.hostVeth !== undefined && masters.get(c.hostVeth) !== c.bridge;
        return {
          id: c.id,
          mode: c.mode,
          ip: c.ip ? `${c.ip}/${c.prefix}` : '',
          // Both families (dual stack networks); `ip` is the IPv4 one, as before.
          ips: [c.ip ? `${c.ip}/${c.prefix}` : '', c.ip6 ? `${c.ip6}/${db.networks[c.bridge]?.subnet6?.split('/')[1] ?? '128'}` : ''].filter(Boolean),
          bridge: c.bridge,
          ...(c.hostVeth ? { hostLink: c.hostVeth } : {}),
          ...(c.mac ? { mac: c.mac } : {}),
          ...(c.mode !== 'shared' ? { firewall: c.firewall ?? 'iptables' } : {}),
          ports: c.ports.map(formatPort),
          pid: c.pid ?? null,
          ...(c.nsPath ? { netns: c.nsPath } : {}),
          ...(c.cni ? { cni: c.cni } : {}),
          alive,
          ...(c.sharedWith ? { sharedWith: c.sharedWith } : {}),
          ...(detached ? { detached: true } : {}),
          ...(c.damaged ? { damaged: c.damaged } : {}),
          ...(c.recovered ? { recovered: true } : {}),
        };
      });
      if (flags.json) process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
      else {
        const stateOf = (r: (typeof rows)[number]): string =>
          r.damaged ? 'damaged' : (r.alive ? 'running' : 'gone') + (r.detached ? ' (detached from bridge)' : '') + (r.sharedWith ? ` (shares ${r.sharedWith})` : '');
        process.stdout.write(
          table([
            ['ID', 'ADDRESS', 'BRIDGE', 'PORTS', 'PID', 'STATE'],
            // A CNI attachment is named by its runtime's namespace file, not a process.
            ...rows.map((r) => [r.id, r.ips.join(',') || '-', r.bridge, r.ports.join(',') || '-', r.netns ? 'cni' : String(r.pid ?? '-'), stateOf(r)]),
          ]),
        );
      }
      return 0;
    }
    case 'gc': {
      const { gc } = await import('../core/admin/gc.js');
      const r = await gc(stateDir, new OpLog(`${stateDir}/ocinet.log`, (w) => process.stderr.write(`ocinet gc: warning: ${w}\n`)));
      if (flags.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      else {
        const n = (xs: string[]): string => (xs.length ? xs.join(', ') : 'none');
        process.stdout.write(
          `containers: ${n(r.containers)}\nlinks: ${n(r.links)}\nchains: ${n(r.chains)}\nbridges: ${n(r.bridges)}\ntemp files: ${n(r.tempFiles)}\nsandbox records: ${n(r.sandboxes)}\n`,
        );
      }
      for (const e of r.errors) process.stderr.write(`ocinet gc: ${e}\n`);
      return r.errors.length ? 1 : 0;
    }
    case 'reload': {
      const { reload } = await import('../core/admin/reload.js');
      const r = await reload(stateDir, new OpLog(`${stateDir}/ocinet.log`, (w) => process.stderr.write(`ocinet reload: warning: ${w}\n`)));
      if (flags.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      else process.stdout.write(`networks: ${r.networks.join(', ') || 'none'}\ncontainers: ${r.containers.join(', ') || 'none'}\n`);
      for (const e of r.errors) process.stderr.write(`ocinet reload: ${e}\n`);
      return r.errors.length ? 1 : 0;
    }
    case 'doctor': {
      const { doctor } = await import('../core/admin/doctor.js');
      const checks = await doctor(stateDir);
      if (flags.json) process.stdout.write(JSON.stringify(checks, null, 2) + '\n');
      else {
        for (const c of checks) {
          const mark = c.ok ? 'ok  ' : c.required ? 'FAIL' : 'warn';
          process.stdout.write(`${mark}  ${c.name}: ${c.detail}${c.fix ? `  (fix: ${c.fix})` : ''}\n`);
        }
      }
      return checks.some((c) => c.required && !c.ok) ? 1 : 0;
    }
    default:
      throw new OcinetError('EINPUT', `unknown command '${cmd}' (try: list, gc, reload, publish, unpublish, doctor, network, ipvs)`);
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`ocinet: ${errorLine(e)}\n`);
    process.exit(1);
  },
);
