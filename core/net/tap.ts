/**
 * Host TAP devices for VM sandboxes. A TAP is made persistent with
 * `ip tuntap` (QEMU then opens it by name), multi-queue when the NIC has more
 * than one queue pair. Kata's documents expect the TAP to exist already; such a
 * TAP is reused, and only a TAP ocinet created is ever deleted.
 */
import { deleteLink, linkDetails, linkExists } from './bridge.js';
import { OcinetError } from '../base/errors.js';
import { ipBatch } from './netns.js';
import { portSysctls } from './sysctl.js';

export interface TapOptions {
  /** Queue pairs of the NIC; > 1 makes a multi_queue TAP (the kernel refuses a mismatch when QEMU opens it). */
  queues: number;
  mtu: number;
  /** Attach to this bridge. */
  bridge?: string;
}

export interface TapResult {
  created: boolean;
  /** A reused TAP's MTU before we set ours (only when it differed). */
  origMtu?: number;
  /** A reused TAP had no master and we attached it to `bridge`. */
  attached?: boolean;
}

/**
 * Create TAP `name` (mode tap, multi_queue when queues > 1), set its MTU,
 * attach it to the bridge and bring it up; or reuse an existing TAP with the
 * same queue mode. Anything else under that name is refused.
 */
export async function ensureTap(name: string, o: TapOptions): Promise<TapResult> {
  const multi = o.queues > 1;
  if (o.bridge && !linkExists(o.bridge)) throw new OcinetError('ENOTFOUND', `bridge '${o.bridge}' does not exist`);
  if (linkExists(name)) {
    const l = await linkDetails(name);
    const kind = l?.linkinfo?.info_kind;
    const type = l?.linkinfo?.info_data?.type;
    if (!l || kind !== 'tun' || type !== 'tap') {
      const what = kind === 'tun' ? 'a tun (layer 3) device' : kind ? `a ${kind} device` : 'not a tun/tap device';
      throw new OcinetError('ECONFLICT', `host device '${name}' exists and is ${what}, not a TAP`);
    }
    const isMulti = l.linkinfo?.info_data?.multi_queue === true;
    if (isMulti !== multi) {
      throw new OcinetError(
        'ECONFLICT',
        isMulti
          ? `TAP '${name}' exists with multi_queue, but queues is ${o.queues} (give queues > 1 or recreate the TAP without multi_queue)`
          : `TAP '${name}' exists without multi_queue, but queues is ${o.queues} (recreate it with 'ip tuntap add ${name} mode tap multi_queue')`,
      );
    }
    if (o.bridge && l.master && l.master !== o.bridge) {
      throw new OcinetError('ECONFLICT', `TAP '${name}' exists and is attached to '${l.master}', not to bridge '${o.bridge}'`);
    }
    const res: TapResult = { created: false };
    if (l.mtu !== o.mtu) res.origMtu = l.mtu;
    const attach = o.bridge !== undefined && !l.master;
    if (attach) res.attached = true;
    await ipBatch([`link set ${name} mtu ${o.mtu}${attach ? ` master ${o.bridge}` : ''} up`]);
    return res;
  }
  await ipBatch([`tuntap add ${name} mode tap${multi ? ' multi_queue' : ''}`]);
  try {
    // A bridge port of ours takes no IPv6 of its own (set before it is up).
    if (o.bridge) portSysctls(name);
    await ipBatch([`link set ${name} mtu ${o.mtu}${o.bridge ? ` master ${o.bridge}` : ''} up`]);
  } catch (e) {
    await deleteLink(name).catch(() => undefined);
    throw e;
  }
  return { created: true };
}

/** Undo what ensureTap did to a TAP it reused: MTU back, off the bridge it attached. */
export async function restoreTap(name: string, r: TapResult): Promise<void> {
  if (r.created || !linkExists(name)) return;
  const parts = [r.origMtu !== undefined ? `mtu ${r.origMtu}` : '', r.attached ? 'nomaster' : ''].filter(Boolean);
  if (parts.length) await ipBatch([`link set ${name} ${parts.join(' ')}`], true);
}
