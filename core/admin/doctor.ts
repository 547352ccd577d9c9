/**
 * Checks the programs and kernel features the hooks need. Kernel features are
 * tried for real, but inside a throwaway network namespace, so the machine's
 * own network is never touched.
 */
import { DEFAULT_POLICY, VM_SOCKET_DIRS, type AnnotationPolicy } from '../input/policy.js';
import { accessSync, constants, existsSync, lstatSync } from 'node:fs';
import { errorLine } from '../base/errors.js';
import { hasProgram, run } from '../base/exec.js';
import { acquire, LOCK_MECHANISM, lockName } from '../state/lock.js';
import { native } from '../base/native.js';
import { inspectStateDir, useStateDir } from '../state/statedir.js';
import { loadDb } from '../state/store.js';
import { missingRules } from './reload.js';

export interface Check {
  name: string;
  ok: boolean;
  required: boolean;
  detail: string;
  fix?: string;
}

const PROGRAMS: { prog: string; pkg: string; required: boolean; why: string }[] = [
  { prog: 'ip', pkg: 'iproute2', required: true, why: 'links, addresses, routes' },
  { prog: 'nsenter', pkg: 'util-linux', required: true, why: 'configure the container side' },
  { prog: 'unshare', pkg: 'util-linux', required: true, why: 'doctor and tests use throwaway namespaces' },
  { prog: 'iptables-restore', pkg: 'iptables', required: true, why: 'NAT and published ports' },
  { prog: 'iptables-save', pkg: 'iptables', required: true, why: 'finding rules to remove' },
  { prog: 'ebtables-restore', pkg: 'iptables', required: true, why: 'port guards: anti-spoofing, no router advertisements from containers' },
  { prog: 'ebtables-save', pkg: 'iptables', required: true, why: 'finding port guards to remove' },
  { prog: 'nft', pkg: 'nftables', required: false, why: 'the nftables firewall backend (--firewall auto picks it when present)' },
  { prog: 'conntrack', pkg: 'conntrack', required: false, why: 'flushing stale UDP mappings' },
  { prog: 'runc', pkg: 'runc', required: false, why: 'the runtime that calls the hooks' },
];

async function inThrowawayNs(args: string[], input?: string): Promise<{ ok: boolean; detail: string }> {
  const r = await run('unshare', ['--net', '--', ...args], { allowFail: true, ...(input !== undefined ? { input } : {}) });
  return { ok: r.code === 0, detail: (r.stderr || r.stdout).trim().split('\n')[0] ?? '' };
}

const NAT_PROBE = `*nat
:OCINET-PROBE - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment probe -j OCINET-PROBE
-A OCINET-PROBE -p tcp -m tcp --dport 1 -j MARK --set-xmark 0x2000/0x2000
-A OCINET-PROBE -p tcp -m tcp --dport 1 -j DNAT --to-destination 10.0.0.2:1
-A POSTROUTING -m mark --mark 0x2000/0x2000 -j MASQUERADE
COMMIT
*filter
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT
COMMIT
`;

const NFT_PROBE = `add table inet ocinet-probe
add chain inet ocinet-probe post { type nat hook postrouting priority srcnat; }
add rule inet ocinet-probe post ip saddr 10.0.0.0/24 ip daddr != 10.0.0.0/24 masquerade
add chain inet ocinet-probe pre { type nat hook prerouting priority dstnat; }
add rule inet ocinet-probe pre fib daddr type local tcp dport 1 dnat ip to 10.0.0.2:1
add table bridge ocinet-probe
add chain bridge ocinet-probe pre { type filter hook prerouting priority -300; }
add rule bridge ocinet-probe pre iifname "ocprobe0" ether saddr != 02:00:00:00:00:01 drop
`;

const GUARD_PROBE = `*nat
:OCINET-PROBE RETURN
-A OCINET-PROBE -s ! 02:00:00:00:00:01 -j DROP
-A OCINET-PROBE -p ARP --arp-ip-src ! 10.0.0.2 -j DROP
-A OCINET-PROBE -p IPv6 --ip6-proto ipv6-icmp --ip6-icmp-type 134 -j DROP
-A PREROUTING -i ocprobe0 -j OCINET-PROBE
COMMIT
`;

/** Whether the hooks run nftables transactions through libnftables in their own process (an empty one, changing nothing). */
function inProcessNft(): Check {
  const name = 'libnftables (nftables rules without running nft)';
  try {
    const ok = native().nftRun('', false) !== null;
    return { name, ok, required: false, detail: ok ? 'libnftables.so.1 loads' : 'libnftables.so.1 cannot be loaded: hooks run the nft program (slower)', ...(ok ? {} : { fix: 'apt-get install libnftables1' }) };
  } catch (e) {
    return { name, ok: false, required: false, detail: errorLine(e), fix: "run 'make build' (dist/bin/native.node)" };
  }
}

export async function doctor(stateDir: string): Promise<Check[]> {
  const checks: Check[] = [];
  for (const p of PROGRAMS) {
    const ok = hasProgram(p.prog);
    checks.push({
      name: `program ${p.prog}`, ok, required: p.required, detail: p.why,
      ...(ok ? {} : { fix: `apt-get install ${p.pkg}` }),
    });
  }
  if (hasProgram('unshare') && hasProgram('ip')) {
    const probes: [string, string[], string | undefined, string][] = [
      ['network namespaces (root)', ['true'], undefined, 'run as root (CAP_SYS_ADMIN, CAP_NET_ADMIN)'],
      ['kernel: bridge', ['ip', 'link', 'add', 'ocprobe0', 'type', 'bridge'], undefined, 'modprobe bridge (CONFIG_BRIDGE)'],
      ['kernel: veth', ['ip', 'link', 'add', 'ocprobe1', 'type', 'veth', 'peer', 'name', 'ocprobe2'], undefined, 'modprobe veth (CONFIG_VETH)'],
      ['kernel: tun/tap', ['ip', 'tuntap', 'add', 'ocprobe3', 'mode', 'tap'], undefined, 'modprobe tun and make /dev/net/tun (CONFIG_TUN)'],
    ];
    if (hasProgram('iptables-restore')) {
      probes.push(['kernel: NAT, DNAT, MASQUERADE, mark, conntrack', ['iptables-restore', '--noflush'], NAT_PROBE, 'enable nf_tables/nat/conntrack (CONFIG_NF_NAT, CONFIG_NETFILTER_XT_*)']);
    }
    if (hasProgram('nft')) {
      probes.push(['kernel: nftables (inet NAT, bridge filtering)', ['nft', '-f', '-'], NFT_PROBE, 'enable nf_tables (CONFIG_NF_TABLES_INET, CONFIG_NF_TABLES_BRIDGE, CONFIG_NFT_NAT, CONFIG_NFT_FIB)']);
    }
    if (hasProgram('ebtables-restore')) {
      probes.push(['kernel: bridge filtering (port guards)', ['ebtables-restore', '--noflush'], GUARD_PROBE, 'enable nf_tables bridge filtering (CONFIG_NF_TABLES_BRIDGE)']);
    }
    for (const [name, args, input, fix] of probes) {
      const r = await inThrowawayNs(args, input);
      checks.push({ name, ok: r.ok, required: true, detail: r.ok ? 'works' : r.detail, ...(r.ok ? {} : { fix }) });
    }
  }
  checks.push(inProcessNft());
  const ipvs = existsSync('/proc/net/ip_vs');
  checks.push({
    name: 'kernel: IP_VS (ocinet ipvs on container sandboxes)', ok: ipvs, required: false,
    detail: ipvs ? 'present' : 'absent', ...(ipvs ? {} : { fix: 'modprobe ip_vs (CONFIG_IP_VS)' }),
  });
  checks.push(...(await stateDirChecks(stateDir)));
  checks.push(...(await rulesCheck(stateDir)));
  checks.push(policyCheck(DEFAULT_POLICY));
  return checks;
}

/** The rules the state's networks need are all there (a flush by someone else takes them). */
async function rulesCheck(stateDir: string): Promise<Check[]> {
  let db;
  try {
    db = loadDb(stateDir);
  } catch {
    return []; // the state file check above reports an unreadable state
  }
  if (Object.keys(db.networks).length === 0) return [];
  const missing = await missingRules(db, stateDir);
  return [{
    name: 'rules of the networks in the state', ok: missing.length === 0, required: false,
    detail: missing.length ? `missing for ${missing.join(', ')}` : `all there (${Object.keys(db.networks).join(', ')})`,
    ...(missing.length ? { fix: `ocinet reload --state-dir ${stateDir}` } : {}),
  }];
}

/**
 * What annotations may ask for. The policy is in each hook entry's args, which
 * doctor cannot see: it reports the defaults and the flags that widen them.
 */
function policyCheck(p: AnnotationPolicy): Check {
  const detail = [
    `host devices moved in: ${p.hostDevices.join(', ') || 'none'}`,
    `host devices created: ${p.devicePrefix || 'any unused name'}*`,
    `QEMU sockets: ${[...p.vmSocketDirs, ...VM_SOCKET_DIRS.map((d) => `${d}/<id>/`)].join(', ')}`,
    `host ports: ${p.publishRange[0]}-${p.publishRange[1]}`,
  ].join('; ');
  return {
    name: 'annotation policy (defaults; a hook entry widens them with --allow-host-device, --annotation-device-prefix, --allow-vm-sockets, --publish-range)',
    ok: true, required: false, detail,
  };
}

/** The state dir is root's alone (else the hook refuses it), writable, and its lock can be taken. */
async function stateDirChecks(stateDir: string): Promise<Check[]> {
  const { problem, fix, stat } = inspectStateDir(stateDir);
  if (problem) return [{ name: 'state directory', ok: false, required: true, detail: problem, ...(fix ? { fix } : {}) }];
  const checks: Check[] = [];
  try {
    useStateDir(stateDir);
    accessSync(stateDir, constants.W_OK);
    const mode = (stat ?? lstatSync(stateDir)).mode & 0o7777;
    const loose = (mode & 0o077) !== 0;
    checks.push({
      name: 'state directory', ok: true, required: true,
      detail: `${stateDir}: root's alone${stat ? '' : ' (created)'}, mode ${mode.toString(8).padStart(4, '0')}`,
    });
    // Not refused (nobody else can write), but records and the log should not be readable by others.
    if (loose) checks.push({ name: 'state directory permissions', ok: false, required: false, detail: `${stateDir} is readable by others`, fix: `chmod 0700 ${stateDir}` });
  } catch (e) {
    return [{ name: 'state directory', ok: false, required: true, detail: `${stateDir}: ${errorLine(e)}`, fix: 'use --state-dir on a writable, preferably tmpfs, path' }];
  }
  try {
    const lock = await acquire(stateDir, 0);
    await lock.release();
    checks.push({ name: 'state lock', ok: true, required: true, detail: `${LOCK_MECHANISM}: ${lockName(stateDir)} free` });
  } catch (e) {
    const held = /still held/.test(errorLine(e));
    checks.push({
      name: 'state lock', ok: held, required: true,
      detail: held ? `${LOCK_MECHANISM}: ${lockName(stateDir)} held by a running ocinet` : errorLine(e),
      ...(held ? {} : { fix: "run 'make build' (dist/bin/native.node) as root" }),
    });
  }
  return checks;
}
