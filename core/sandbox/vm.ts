/**
 * A VM sandbox's network (TAP mode): the same bridge, IPAM, NAT and published
 * ports as a container's, with the NIC hot-plugged into its QEMU.
 */
import { existsSync } from 'node:fs';
import { gatewayOf, intToIp, parseSubnet } from '../base/cidr.js';
import { vmNicOf } from './objects.js';
import { OcinetError } from '../base/errors.js';
import type { OpLog } from '../state/log.js';
import { stateId, tapName, vmMac } from '../state/names.js';
import { checkVmSocket, DEFAULT_POLICY, isPlainId, socketProblem, VM_SOCKET_DIRS } from '../input/policy.js';
import { socketOwner, startTime } from '../base/proc.js';
import { defaultRoute } from '../net/route.js';
import { type ContainerRecord } from '../state/store.js';
import { borrowedAgent } from '../kata/records.js';
import { guestIpBatch, vmAddIface, type VmSockets } from '../vm/hotplug.js';
import type { SetupRequest } from '../input/request.js';
import { addExtras, assertNew, claim, decide, firewall, resultOf, type SetupResult } from './claim.js';
import { teardownContainer } from './teardown.js';

/**
 * A VM sandbox's QEMU sockets. Named by the hook entry (--qmp/--qga, the
 * admin's): used as given. Named by an annotation: checked against the
 * policy before any connect. Not named: Kata's `/run/vc/vm/ID/`, then
 * `/run/ocinet/vm/ID/`, each holding qmp.sock and qga.sock.
 */
function vmSockets(req: SetupRequest): VmSockets {
  const policy = req.policy ?? DEFAULT_POLICY;
  for (const k of ['qmp', 'qga'] as const) {
    const p = req.vm?.[k];
    if (p && req.vmAnnotated?.[k]) checkVmSocket(policy, p, req.id, `annotation io.ocinet.${k}`);
  }
  const given = req.vm;
  if (given?.qmp && given.qga) return { qmp: given.qmp, qga: given.qga };
  const tried: string[] = [];
  for (const dir of isPlainId(req.id) ? VM_SOCKET_DIRS : []) {
    const qmp = given?.qmp ?? `${dir}/${req.id}/qmp.sock`;
    const qga = given?.qga ?? `${dir}/${req.id}/qga.sock`;
    // A given one was checked above; a default one has no symlink below the directory.
    const ok = (p: string, g: string | undefined): boolean => (p === g ? existsSync(p) : socketProblem(dir, p) === null);
    if (ok(qmp, given?.qmp) && ok(qga, given?.qga)) return { qmp, qga };
    tried.push(`${qmp} + ${qga}`);
  }
  throw new OcinetError('ENOTFOUND', `no QEMU sockets for VM sandbox ${req.id} (tried ${tried.join(', ') || 'nothing: the id is not a plain name'}; name them with io.ocinet.qmp and io.ocinet.qga)`);
}

/**
 * The QEMU behind a VM sandbox: the process listening on its QMP socket (in
 * this namespace), else the state's pid. Named by pid + start time.
 */
function qemuIdentity(vm: VmSockets, statePid: number): Pick<ContainerRecord, 'pid' | 'start'> {
  const pid = socketOwner(vm.qmp) ?? (statePid > 0 ? statePid : null);
  const start = pid ? startTime(pid) : null;
  return pid && start !== null ? { pid, start } : {};
}

/**
 * TAP mode: the same bridge, IPAM, NAT and published ports, but the NIC is a
 * TAP hot-plugged into the VM's QEMU over QMP and configured in the guest by
 * its agent (address, MTU, default route).
 */
export async function setupVm(req: SetupRequest, log?: OpLog): Promise<SetupResult> {
  const vm = vmSockets(req);
  if (req.subnet6) throw new OcinetError('EINPUT', '--subnet6: TAP mode (VM sandboxes) is IPv4 only for now');
  const sn = parseSubnet(req.subnet);
  const gateway = intToIp(gatewayOf(sn));
  const qemu = qemuIdentity(vm, req.pid);
  log?.step('check');
  const rec = await decide(req, log, async (db, reclaim) => {
    assertNew(db, req.id, reclaim);
    return claim(db, req, sn.prefix, gateway, { mode: 'tap', hostVeth: tapName(req.id, stateId(req.stateDir)), mac: vmMac(req.id), vm, ...qemu }, reclaim);
  });
  log?.step('ipam');
  try {
    const fw = firewall(rec, req);
    fw.catch(() => undefined); // awaited below; a failed hot-plug must not leave it unhandled
    const nic = vmNicOf(rec);
    // A connection an `ocinet` call left held is borrowed (QEMU serves one client); the hook keeps none.
    const hold = borrowedAgent(vm, req.stateDir);
    await vmAddIface(vm, { ...nic, IPAddresses: [{ address: rec.ip!, mask: String(sn.prefix) }] }, { bridge: req.bridge, hold });
    log?.step('hotplug');
    await guestIpBatch(vm, [defaultRoute(gateway, req.iface)], hold);
    log?.step('guest');
    await fw;
    await addExtras(rec, req);
  } catch (e) {
    await teardownContainer(req.id, req, { bundle: req.bundle }).catch(() => undefined);
    throw e;
  }
  return resultOf(rec, gateway);
}
