/**
 * The VM side of the kata-network operations: a host TAP (or a vhost-user
 * socket) hot-plugged into a running QEMU over QMP as a virtio-net-pci NIC,
 * then configured inside the guest through the QEMU guest agent, which runs
 * the guest's own `ip` (so the guest side takes the same `ip` lines as
 * container sandboxes).
 *
 * QEMU serves one client per socket, so every function here opens its QMP
 * and agent connections and closes them before it returns. Everything is
 * bounded by timeouts; a QEMU that dies mid-operation makes the pending call
 * reject at once (the sockets close), and what was created on the host goes.
 *
 * QEMU object ids derive from the sandbox-side name: netdev `net-NAME`,
 * device `nic-NAME`, chardev `char-NAME` (kata names are valid QEMU ids).
 */
import { existsSync, statSync } from 'node:fs';
import { deleteLink, linkExists } from '../net/bridge.js';
import { OcinetError } from '../base/errors.js';
import { outputReason } from '../base/exec.js';
import { addressOf, type AddedIface, type IfaceInput } from '../input/iface.js';
import type { AgentHold } from './agent-hold.js';
import { agentSilent, QgaClient, type GuestExecOptions, type GuestExecResult, type GuestNetworkInterface } from './qga.js';
import { QmpClient, QmpCommandError, type JsonObject } from './qmp.js';
import { ensureTap, restoreTap, type TapResult } from '../net/tap.js';

export interface VmSockets {
  qmp: string;
  qga: string;
}

export interface VmAddOptions {
  /** Attach the TAP to this bridge. */
  bridge?: string;
  /** How long the guest may take to show the new NIC (ms, default 30 s). */
  timeoutMs?: number;
  /** The agent connection shared between calls (agent-hold.ts). */
  hold?: AgentHold;
}

/** What vmAddIface did, beyond AddedIface, so vmDelIface undoes exactly that. */
export interface VmAddedIface extends AddedIface {
  /** ocinet created the host TAP (delete it at del); false: it existed and is kept. */
  createdTap: boolean;
  /** A reused TAP had no master and was attached to the bridge (detach at del). */
  tapAttached?: boolean;
}

/** Connecting (and QMP greeting / agent sync). */
const CONNECT_MS = 5_000;
/** One QMP command or agent request. */
const COMMAND_MS = 10_000;
/** One guest exec (`ip` is quick; TCG guests are slow). */
const GUEST_EXEC_MS = 15_000;
const DEFAULT_NIC_WAIT_MS = 30_000;
const DEFAULT_UNPLUG_MS = 10_000;
/** Unplug during a failed add's rollback: shorter, the error is already on its way. */
const ROLLBACK_UNPLUG_MS = 5_000;

export function vmIds(name: string): { netdev: string; device: string; chardev: string } {
  return { netdev: `net-${name}`, device: `nic-${name}`, chardev: `char-${name}` };
}

// ---- connections ----

async function openQmp(path: string, timeoutMs = CONNECT_MS): Promise<QmpClient> {
  return QmpClient.connect(path, { timeoutMs });
}

async function openQga(path: string, sync = true, timeoutMs = CONNECT_MS, hold?: AgentHold): Promise<QgaClient> {
  try {
    return await QgaClient.connect(path, { timeoutMs, sync, ...(hold && { hold }) });
  } catch (e) {
    // The socket is there but nobody answers guest-sync: qemu-ga is not
    // running in the guest (or another client holds the channel).
    if (e instanceof Error && /no reply within/.test(e.message)) throw agentSilent(path, timeoutMs);
    throw e;
  }
}

/**
 * One agent connection for everything `fn` asks of the guest (each new one waits for the agent to
 * notice it; `hold` borrows a held one and keeps this one after). No guest-sync first: `fn`'s first
 * request finds out whether the agent answers.
 */
export async function withQga<T>(vm: VmSockets, fn: (qga: QgaClient) => Promise<T>, hold?: AgentHold): Promise<T> {
  const qga = await openQga(vm.qga, false, CONNECT_MS, hold);
  try {
    return await fn(qga);
  } finally {
    qga.close();
  }
}

/** connectUnix's wording for a socket with no QEMU behind it. */
function qemuGone(e: unknown, path: string): boolean {
  // A QEMU killed a moment ago can still accept and then reset the connection.
  return !existsSync(path) || (e instanceof Error && /no such socket|refused|QEMU exited/.test(e.message));
}

// ---- PCI address ----

interface PciDevice {
  slot: number;
  function: number;
  qdev_id?: string;
  pci_bridge?: { devices?: PciDevice[] };
}

/**
 * The device's PCI path in kata's format: the slot of each PCI bridge from
 * the root bus down, then the device's own slot, two hex digits each, joined
 * by '/'. kata-runtime 1.x printed "%02x/%s" (bridge slot / slot on that
 * bridge, e.g. "02/01") because it always plugged NICs behind its own
 * pci-bridge; kata 2.x generalised this as PciPath ("xx/.../zz"; a device on
 * the root bus is just "zz"). QEMU here plugs onto the root bus of machine
 * `pc`, so a typical value is "02"; behind a bridge it would be "02/01".
 * The function number is not part of it (kata's PciSlot has none).
 */
export function pciPathOf(buses: { devices: PciDevice[] }[], qdevId: string): string | undefined {
  const hex = (n: number): string => n.toString(16).padStart(2, '0');
  const walk = (devs: PciDevice[], path: string[]): string | undefined => {
    for (const d of devs) {
      if (d.qdev_id === qdevId) return [...path, hex(d.slot)].join('/');
      const below = d.pci_bridge?.devices;
      if (below?.length) {
        const hit = walk(below, [...path, hex(d.slot)]);
        if (hit) return hit;
      }
    }
    return undefined;
  };
  for (const b of buses) {
    const hit = walk(b.devices ?? [], []);
    if (hit) return hit;
  }
  return undefined;
}

// ---- guest side ----

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function guestIp(qga: QgaClient, args: string[], input?: string): Promise<string> {
  const r = await qga.exec('ip', args, { ...(input !== undefined && { input }), timeoutMs: GUEST_EXEC_MS });
  if (r.exitcode !== 0) {
    throw new OcinetError('EEXEC', `guest: ip ${args.join(' ')}: ${outputReason(r.stderr, r.stdout, 3) || `exit ${r.exitcode}`}`);
  }
  return r.stdout;
}

/** Poll the agent until a NIC with `mac` shows up; its current guest name. */
async function waitGuestNic(qga: QgaClient, qmp: QmpClient, mac: string, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (qmp.closed) throw new OcinetError('EEXEC', `QEMU went away while waiting for the guest to see NIC ${mac}`);
    const ifs: GuestNetworkInterface[] = await qga.networkGetInterfaces(Math.max(1, Math.min(COMMAND_MS, deadline - Date.now())));
    const hit = ifs.find((i) => i['hardware-address']?.toLowerCase() === mac);
    if (hit) return hit.name;
    if (Date.now() + 100 >= deadline) {
      throw new OcinetError('EEXEC', `the guest did not show a NIC with MAC ${mac} within ${timeoutMs} ms (no virtio_net driver in the guest?)`);
    }
    await sleep(100);
  }
}

// ---- add ----

interface Done {
  tap?: TapResult;
  chardev: boolean;
  netdev: boolean;
  device: boolean;
}

/**
 * Unplug device `id`: device_del, then wait for DEVICE_DELETED (the guest
 * must release it). Resolves when the device is gone (or never was there).
 */
async function unplug(qmp: QmpClient, id: string, timeoutMs: number): Promise<void> {
  // Register before device_del: the event may come before the reply.
  const deleted = qmp.waitEvent('DEVICE_DELETED', (e) => e.data?.device === id, timeoutMs);
  // On a closed client waitEvent rejects without a handler; device_del then throws first.
  deleted.catch(() => undefined);
  try {
    await qmp.execute('device_del', { id }, COMMAND_MS);
  } catch (e) {
    if (e instanceof QmpCommandError && e.errorClass === 'DeviceNotFound') return;
    // A retry after a timed-out unplug: QEMU still waits for the guest; so do we.
    if (!(e instanceof QmpCommandError && /in the process of unplug/.test(e.message))) throw e;
  }
  try {
    await deleted;
  } catch (e) {
    if (qmp.closed) throw e;
    throw new OcinetError('EEXEC', `device_del ${id}: the guest did not release the NIC within ${timeoutMs} ms (no DEVICE_DELETED event; is the guest OS running?)`);
  }
}

async function qmpIgnoreMissing(qmp: QmpClient, command: string, args: JsonObject): Promise<void> {
  try {
    await qmp.execute(command, args, COMMAND_MS);
  } catch (e) {
    if (e instanceof QmpCommandError && (e.errorClass === 'DeviceNotFound' || /not found/i.test(e.message))) return;
    throw e;
  }
}

/** Best effort: undo a partial add; returns what could not be undone. */
async function rollback(qmp: QmpClient, a: VmAddedIface, done: Done): Promise<string[]> {
  const ids = vmIds(a.name);
  const left: string[] = [];
  const step = async (what: string, fn: () => Promise<void>): Promise<void> => {
    try {
      await fn();
    } catch (e) {
      // QEMU gone: its objects went with it.
      if (!qmp.closed) left.push(`${what}: ${(e as Error).message}`);
    }
  };
  if (done.device) await step(`unplug ${ids.device}`, () => unplug(qmp, ids.device, ROLLBACK_UNPLUG_MS));
  if (done.netdev) await step(`netdev_del ${ids.netdev}`, () => qmpIgnoreMissing(qmp, 'netdev_del', { id: ids.netdev }));
  if (done.chardev) await step(`chardev-remove ${ids.chardev}`, () => qmpIgnoreMissing(qmp, 'chardev-remove', { id: ids.chardev }));
  if (done.tap) {
    const tap = done.tap;
    await step(`TAP ${a.device}`, () => (tap.created ? deleteLink(a.device) : restoreTap(a.device, tap)));
  }
  return left;
}

/**
 * add-iface on a VM: host TAP (created or reused) on the bridge, hot-plugged
 * as virtio-net-pci (multi-queue when queues > 1), or a vhost-user NIC when
 * `vhostUserSocket` is given; then the guest's NIC with that MAC is renamed to
 * `name` and gets MTU and address. Any failure undoes what this call did.
 */
export async function vmAddIface(vm: VmSockets, input: IfaceInput, o: VmAddOptions): Promise<VmAddedIface> {
  const ids = vmIds(input.name);
  const mac = input.hwAddr.toLowerCase();
  const queues = input.queues ?? 0;
  const vhost = input.vhostUserSocket;
  const nicWaitMs = o.timeoutMs ?? DEFAULT_NIC_WAIT_MS;
  if (vhost !== undefined) {
    let sock = false;
    try {
      sock = statSync(vhost).isSocket();
    } catch {
      /* missing */
    }
    if (!sock) throw new OcinetError('ENOTFOUND', `vhostUserSocket '${vhost}' is not an existing unix socket`);
  } else if (o.bridge && !linkExists(o.bridge)) {
    throw new OcinetError('ENOTFOUND', `bridge '${o.bridge}' does not exist`);
  }

  // Both connections first: a missing QEMU or a silent agent fails before anything changes.
  const qmp = await openQmp(vm.qmp);
  let qga: QgaClient;
  try {
    qga = await openQga(vm.qga, true, CONNECT_MS, o.hold);
  } catch (e) {
    qmp.close();
    throw e;
  }
  try {
    const before = await qga.networkGetInterfaces(COMMAND_MS);
    if (before.some((i) => i.name === input.name)) throw new OcinetError('ECONFLICT', `interface '${input.name}' already exists in the guest`);
    const same = before.find((i) => i['hardware-address']?.toLowerCase() === mac);
    if (same) throw new OcinetError('ECONFLICT', `the guest already has a NIC with MAC ${mac} (${same.name})`);

    const a: VmAddedIface = {
      device: input.device,
      name: input.name,
      hwAddr: mac,
      mtu: input.mtu,
      kind: 'tap',
      queues,
      linkType: vhost !== undefined ? 'vhost-user' : 'tap',
      createdTap: false,
    };
    const v4 = addressOf(input, 4);
    const v6 = addressOf(input, 6);
    if (v4) Object.assign(a, { address: v4.address, prefix: v4.prefix });
    if (v6) Object.assign(a, { address6: v6.address, prefix6: v6.prefix });
    const done: Done = { chardev: false, netdev: false, device: false };
    try {
      const mq = queues > 1 ? { queues } : {};
      if (vhost !== undefined) {
        await qmp.execute('chardev-add', {
          id: ids.chardev,
          backend: { type: 'socket', data: { addr: { type: 'unix', data: { path: vhost } }, server: false } },
        }, COMMAND_MS);
        done.chardev = true;
        await qmp.execute('netdev_add', { type: 'vhost-user', id: ids.netdev, chardev: ids.chardev, vhostforce: true, ...mq }, COMMAND_MS);
      } else {
        done.tap = await ensureTap(input.device, { queues, mtu: input.mtu, ...(o.bridge !== undefined && { bridge: o.bridge }) });
        a.createdTap = done.tap.created;
        if (done.tap.origMtu !== undefined) a.origMtu = done.tap.origMtu;
        if (done.tap.attached) a.tapAttached = true;
        await qmp.execute('netdev_add', { type: 'tap', id: ids.netdev, ifname: input.device, script: 'no', downscript: 'no', ...mq }, COMMAND_MS);
      }
      done.netdev = true;
      const dev: JsonObject = { driver: 'virtio-net-pci', id: ids.device, netdev: ids.netdev, mac };
      // One vector per queue, each way, plus config and control (QEMU's own rule).
      if (queues > 1) Object.assign(dev, { mq: true, vectors: 2 * queues + 2 });
      try {
        await qmp.execute('device_add', dev, COMMAND_MS);
      } catch (e) {
        if (e instanceof QmpCommandError) throw new OcinetError('EEXEC', `device_add refused: ${e.message.replace(/^QMP device_add: /, '')}`);
        throw e;
      }
      done.device = true;
      const pci = await qmp.execute<{ devices: PciDevice[] }[]>('query-pci', undefined, COMMAND_MS);
      const path = pciPathOf(pci, ids.device);
      if (!path) throw new OcinetError('EEXEC', `QEMU does not list device ${ids.device} in query-pci`);
      a.pciAddr = path;

      const old = await waitGuestNic(qga, qmp, mac, nicWaitMs);
      await guestIp(qga, ['-batch', '-'], [
        `link set ${old} down`,
        ...(old !== a.name ? [`link set ${old} name ${a.name}`] : []),
        `link set ${a.name} mtu ${a.mtu}`,
        ...(a.address ? [`addr add ${a.address}/${a.prefix} dev ${a.name}`] : []),
        ...(a.address6 ? [`addr add ${a.address6}/${a.prefix6} dev ${a.name} nodad`] : []),
        `link set ${a.name} up`,
      ].join('\n') + '\n');
      return a;
    } catch (e) {
      const left = await rollback(qmp, a, done);
      if (left.length === 0) throw e;
      throw new OcinetError(e instanceof OcinetError ? e.code : 'EEXEC', `${(e as Error).message} (rollback incomplete: ${left.join('; ')})`);
    }
  } finally {
    qmp.close();
    qga.close();
  }
}

// ---- del ----

async function removeHostSide(a: AddedIface & { createdTap?: boolean; tapAttached?: boolean }): Promise<void> {
  if (a.linkType === 'vhost-user') return;
  if (a.createdTap) await deleteLink(a.device);
  else await restoreTap(a.device, { created: false, ...(a.origMtu !== undefined && { origMtu: a.origMtu }), ...(a.tapAttached && { attached: true }) });
}

/**
 * del-iface on a VM: device_del, wait for DEVICE_DELETED (bounded; an error
 * if the guest does not release it, and then nothing else is touched, so a
 * retry can finish), netdev_del, chardev-remove, then the TAP if ocinet made
 * it. With QEMU gone (socket missing or refused) only the host side is left
 * to remove. `createdTap` missing means "not ours": the TAP is kept.
 */
export async function vmDelIface(vm: VmSockets, a: AddedIface & { createdTap?: boolean; tapAttached?: boolean }, o: { timeoutMs?: number } = {}): Promise<void> {
  const ids = vmIds(a.name);
  let qmp: QmpClient;
  try {
    qmp = await openQmp(vm.qmp);
  } catch (e) {
    if (!qemuGone(e, vm.qmp)) throw e;
    await removeHostSide(a);
    return;
  }
  try {
    await unplug(qmp, ids.device, o.timeoutMs ?? DEFAULT_UNPLUG_MS);
    await qmpIgnoreMissing(qmp, 'netdev_del', { id: ids.netdev });
    if (a.linkType === 'vhost-user') await qmpIgnoreMissing(qmp, 'chardev-remove', { id: ids.chardev });
  } catch (e) {
    // QEMU died meanwhile: the NIC went with it.
    if (!qmp.closed) throw e;
  } finally {
    qmp.close();
  }
  await removeHostSide(a);
}

// ---- guest views (list-ifaces, add-route, del-route) ----

export interface GuestLink {
  ifindex: number;
  ifname: string;
  address?: string;
  mtu: number;
  addr_info?: { family: string; local: string; prefixlen: number }[];
}

export interface GuestRoute {
  dst: string;
  gateway?: string;
  dev?: string;
}

/** `ip -j addr show` in the guest. */
export async function guestLinks(vm: VmSockets, hold?: AgentHold): Promise<GuestLink[]> {
  const out = await withQga(vm, (qga) => guestIp(qga, ['-j', 'addr', 'show']), hold);
  return JSON.parse(out || '[]') as GuestLink[];
}

/** `ip -j route show table main` in the guest, IPv4 then IPv6. */
export async function guestRoutes(vm: VmSockets, hold?: AgentHold): Promise<GuestRoute[]> {
  return withQga(vm, async (qga) => {
    const out: GuestRoute[] = [];
    for (const family of ['-4', '-6']) out.push(...(JSON.parse((await guestIp(qga, ['-j', family, 'route', 'show', 'table', 'main'])) || '[]') as GuestRoute[]));
    return out;
  }, hold);
}

/** `ip -batch -` in the guest with these lines; EEXEC with ip's stderr when a line fails. */
export async function guestIpBatch(vm: VmSockets, lines: string[], hold?: AgentHold): Promise<void> {
  if (lines.length === 0) return;
  await withQga(vm, (qga) => guestIp(qga, ['-batch', '-'], lines.join('\n') + '\n'), hold);
}

/** QEMU answers query-status on its QMP socket within ~2 s. */
export async function vmAlive(vm: VmSockets): Promise<boolean> {
  let qmp: QmpClient | undefined;
  try {
    qmp = await openQmp(vm.qmp, 2_000);
    await qmp.execute('query-status', undefined, 2_000);
    return true;
  } catch {
    return false;
  } finally {
    qmp?.close();
  }
}

/**
 * Run a program in the guest through its agent (exit code and output, not
 * thrown on non-zero). Output is capped as run()'s is (head and tail kept);
 * a reply too large for the agent client fails the call.
 */
export async function guestRun(
  vm: VmSockets,
  path: string,
  args: string[],
  o: Pick<GuestExecOptions, 'input' | 'timeoutMs' | 'maxStdout' | 'maxStderr'> & { hold?: AgentHold } = {},
): Promise<GuestExecResult> {
  const { hold, ...exec } = o;
  return withQga(vm, (qga) => qga.exec(path, args, { ...exec, timeoutMs: exec.timeoutMs ?? GUEST_EXEC_MS }), hold);
}
