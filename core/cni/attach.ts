/**
 * ADD and DEL of one CNI attachment (network, container id, interface), on
 * the hook's core: the same state, IPAM, rules and teardown. The record's
 * id is `containerId/ifname`, which no OCI container id can be; it is
 * alive while the runtime's namespace file (or /proc/PID/ns/net's process)
 * still names the namespace.
 */
import { OcinetError } from '../base/errors.js';
import { CniError, CNI_CODE, type CniConfig, type CniEnv } from '../input/cni.js';
import type { SetupRequest } from '../input/request.js';
import { openNetnsPath, type NetnsHandle } from '../net/netns.js';
import { attachVeth, type Attached } from '../sandbox/container.js';
import { isAlive } from '../sandbox/reclaim.js';
import { teardownContainer, type TeardownResult } from '../sandbox/teardown.js';
import type { OpLog } from '../state/log.js';
import { cniRecordId, loadDb, type ContainerRecord, type Db, type NetworkRecord } from '../state/store.js';
import { attachmentResult, type CniResult } from './result.js';

/** The attachment's record id and what its record carries. */
export function attachmentOf(cfg: CniConfig, env: CniEnv): { id: string; cni: NonNullable<ContainerRecord['cni']> } {
  return { id: cniRecordId(env.containerId!, env.ifname!), cni: { network: cfg.name } };
}

/** CNI_NETNS opened; one that is not a namespace (or is the plugin's own) is an invalid environment. */
export function openCniNetns(path: string): NetnsHandle {
  try {
    return openNetnsPath(path);
  } catch (e) {
    if (e instanceof OcinetError && e.code !== 'ENOTFOUND') throw new CniError(CNI_CODE.invalidEnvironment, `CNI_NETNS: ${e.message}`);
    throw e;
  }
}

/** The state, or none when it cannot be read (setup and teardown then repair it under the lock). */
function peek(stateDir: string): Db | undefined {
  try {
    return loadDb(stateDir);
  } catch {
    return undefined;
  }
}

export async function cniAdd(cfg: CniConfig, env: CniEnv, log?: OpLog): Promise<CniResult> {
  const { id, cni } = attachmentOf(cfg, env);
  const ns = openCniNetns(env.netns!);
  let attached: Attached;
  try {
    // The same ADD again (a runtime retrying after a timeout): the same result, never a second address.
    const known = made(cfg, id);
    if (known && known.rec.netns === ns.id && isAlive(known.rec)) return await attachmentResult(cfg, known.rec, known.net, env.netns!);
    const req: SetupRequest = {
      stateDir: cfg.stateDir, bridge: cfg.bridge, subnet: cfg.subnet, iface: env.ifname!, mtu: cfg.mtu, keepBridge: cfg.keepBridge,
      firewall: cfg.firewall, id, pid: ns.identity.pid ?? 0, ports: cfg.ports, mode: 'veth', cni,
      ...(cfg.subnet6 ? { subnet6: cfg.subnet6 } : {}), ...(cfg.ip ? { ip: cfg.ip } : {}), ...(cfg.ip6 ? { ip6: cfg.ip6 } : {}),
      ...(cfg.allowSpoofing ? { allowSpoofing: true } : {}),
    };
    attached = await attachVeth(req, ns, log);
  } finally {
    ns.close();
  }
  // The result is the record's, as for a repeated ADD; an attachment whose result cannot be given goes again.
  try {
    return await attachmentResult(cfg, attached.rec, attached.net, env.netns!);
  } catch (e) {
    await cniDel(cfg, env, log).catch(() => undefined);
    throw e;
  }
}

/** This network's record of attachment `id` and its network, when the state holds both (read unlocked: the runtime serializes one attachment's calls). */
function made(cfg: CniConfig, id: string): { rec: ContainerRecord; net: NetworkRecord } | undefined {
  const db = peek(cfg.stateDir);
  const rec = db?.containers[id];
  const net = rec && db?.networks[rec.bridge];
  return rec?.cni?.network === cfg.name && net ? { rec, net } : undefined;
}

/**
 * DEL: idempotent and permissive, as the spec asks: a missing namespace,
 * record or earlier DEL is success. Works from the state alone (the
 * prevResult, when given, adds nothing the record does not hold); a record
 * of another network or of a hook is not touched.
 */
export async function cniDel(cfg: CniConfig, env: CniEnv, log?: OpLog): Promise<TeardownResult> {
  const { id } = attachmentOf(cfg, env);
  return teardownContainer(id, { stateDir: cfg.stateDir, bridge: cfg.bridge, keepBridge: cfg.keepBridge }, { cniNetwork: cfg.name }, log);
}

/** The record of this attachment, or a CNI "unknown container" error. */
export function recordOf(cfg: CniConfig, env: CniEnv): { rec: ContainerRecord; db: Db } {
  const { id } = attachmentOf(cfg, env);
  const db = loadDb(cfg.stateDir);
  const rec = db.containers[id];
  if (!rec || rec.cni?.network !== cfg.name) throw new CniError(CNI_CODE.unknownContainer, `no attachment ${id} of network ${cfg.name} in ocinet's state (${cfg.stateDir})`, 'ENOTFOUND');
  return { rec, db };
}
