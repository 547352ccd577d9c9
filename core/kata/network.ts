/**
 * The kata-network operations (add-iface, del-iface, list-ifaces, add-route,
 * del-route) with kata-runtime's input and output contract, on a sandbox
 * named by a Target (records.ts). The contract's shapes and validation are
 * in iface.ts; the kernel work for container sandboxes is here, the VM side
 * in vm/hotplug.ts; all of it runs under the sandbox's lock.
 */
import { errorLine, OcinetError } from '../base/errors.js';
import { run } from '../base/exec.js';
import { checkNewDeviceName, mayMoveHostDevice, type AnnotationPolicy } from '../input/policy.js';
import { allLinkDetails, linkDetails, linkExists } from '../net/bridge.js';
import { ipBatch, ipBatchIn, netnsId } from '../net/netns.js';
import { withSandboxLock } from '../state/lock.js';
import { guestIpBatch, guestLinks, guestRoutes, vmAddIface, vmDelIface, type GuestLink, type GuestRoute } from '../vm/hotplug.js';
import { addressOf, canonicalDest, ifaceOutput, type AddedIface, type IfaceInput, type IfaceOutput, type ListedIface, type RouteSpec } from '../input/iface.js';
import { allRecords, hasRecord, loadRecord, recordTarget, sandboxAlive, saveRecord, type Target } from './records.js';

// ---- kernel views of a container sandbox ----

// `ip -j` shapes, the same in a container and in a guest.
type IpLink = GuestLink;
type IpRoute = GuestRoute;

async function linksIn(t: Target): Promise<IpLink[]> {
  if (t.vm) return guestLinks(t.vm, t.agent);
  const r = await run('nsenter', [`--net=${t.nsPath}`, '--', 'ip', '-j', 'addr', 'show']);
  return JSON.parse(r.stdout || '[]') as IpLink[];
}

async function routesIn(t: Target): Promise<IpRoute[]> {
  if (t.vm) return guestRoutes(t.vm, t.agent);
  const out: IpRoute[] = [];
  for (const family of ['-4', '-6']) {
    const r = await run('nsenter', [`--net=${t.nsPath}`, '--', 'ip', '-j', family, 'route', 'show', 'table', 'main']);
    out.push(...(JSON.parse(r.stdout || '[]') as IpRoute[]));
  }
  return out;
}

function alive(t: Target): boolean {
  return netnsId(t.nsPath) === t.nsId;
}

/** `ip -batch` inside the sandbox: the container's namespace, or the VM's guest through its agent. */
function batchIn(t: Target, lines: string[]): Promise<void> {
  return t.vm ? guestIpBatch(t.vm, lines, t.agent) : ipBatchIn(t.nsPath, lines);
}

/** Best effort: every line tried, failures ignored (cleanup after a failed batch). */
async function forceBatchIn(t: Target, lines: string[]): Promise<void> {
  if (t.vm) {
    for (const l of lines) await guestIpBatch(t.vm, [l], t.agent).catch(() => undefined);
    return;
  }
  await run('nsenter', [`--net=${t.nsPath}`, '--', 'ip', '-force', '-batch', '-'], { input: lines.join('\n') + '\n', allowFail: true });
}

// ---- operations ----

export interface AddOptions {
  stateDir: string;
  /** Attach a created veth's host end to this bridge. */
  bridge?: string;
  /** Host links no sandbox may take (the ocinet bridge, veth ends the hook made). */
  reserved?: (name: string) => boolean;
  /**
   * Set for annotations (the container user's input): host devices they may
   * move in and the prefix of those they create. Unset for the CLI, which
   * root runs on purpose: kata's semantics, any device.
   */
  policy?: AnnotationPolicy;
}

export async function addIface(t: Target, input: IfaceInput, o: AddOptions): Promise<IfaceOutput> {
  // The sandbox's own lock: another sandbox's records are read as files (each replaced atomically).
  return withSandboxLock(o.stateDir, t.key, async () => {
    const rec = loadRecord(o.stateDir, t);
    if (input.vhostUserSocket !== undefined && !t.vm) {
      throw new OcinetError('EINPUT', `interface field 'vhostUserSocket': only VM sandboxes take vhost-user NICs; this is a container sandbox`);
    }
    if (rec.ifaces.some((i) => i.name === input.name)) throw new OcinetError('ECONFLICT', `interface '${input.name}' already exists in the sandbox`);
    for (const other of allRecords(o.stateDir)) {
      const hit = other.ifaces.find((i) => i.device === input.device);
      if (!hit) continue;
      // A dead sandbox does not keep the device: its interfaces are undone here (moved devices come home).
      if (other.key !== t.key && !sandboxAlive(other)) {
        await releaseSandbox(o.stateDir, recordTarget(other));
        continue;
      }
      throw new OcinetError('ECONFLICT', `device '${input.device}' is already used by sandbox ${other.containerId ?? other.key} (as ${hit.name})`);
    }
    const inside = await linksIn(t);
    if (inside.some((l) => l.ifname === input.name)) throw new OcinetError('ECONFLICT', `interface '${input.name}' already exists in the sandbox`);
    if (input.device === 'lo' || o.reserved?.(input.device)) throw new OcinetError('ECONFLICT', `device '${input.device}' belongs to the host or to ocinet and cannot be given to a sandbox`);
    if (o.policy) {
      if (!linkExists(input.device)) checkNewDeviceName(o.policy, input.device, 'interface');
      else if (!mayMoveHostDevice(o.policy, input.device)) {
        throw new OcinetError('ECONFLICT', `device '${input.device}' is a host device; an annotation may only take one the hook entry allows (--allow-host-device)`);
      }
    }
    if (o.bridge && !linkExists(o.bridge)) throw new OcinetError('ENOTFOUND', `bridge '${o.bridge}' does not exist`);
    if (t.vm) {
      // VM: a TAP on the host hot-plugged through QMP, configured in the guest by its agent.
      const added = await vmAddIface(t.vm, input, { ...(o.bridge && { bridge: o.bridge }), ...(t.agent && { hold: t.agent }) });
      rec.ifaces.push(added);
      saveRecord(o.stateDir, rec);
      return ifaceOutput(added);
    }

    const a: AddedIface = { device: input.device, name: input.name, hwAddr: input.hwAddr, mtu: input.mtu, kind: 'veth', queues: input.queues ?? 0 };
    const v4 = addressOf(input, 4);
    const v6 = addressOf(input, 6);
    if (v4) Object.assign(a, { address: v4.address, prefix: v4.prefix });
    if (v6) Object.assign(a, { address6: v6.address, prefix6: v6.prefix });
    if (linkExists(input.device)) {
      const l = await linkDetails(input.device);
      a.kind = 'moved';
      if (l?.address) a.origMac = l.address;
      if (l?.mtu) a.origMtu = l.mtu;
      if (l?.ifindex) a.hostIndex = l.ifindex;
      await ipBatch([`link set ${a.device} down`, `link set ${a.device} netns ${t.nsPath} name ${a.name}`]);
    } else {
      const q = a.queues > 1 ? ` numtxqueues ${a.queues} numrxqueues ${a.queues}` : '';
      await ipBatch([
        `link add ${a.device} mtu ${a.mtu}${q} type veth peer name ${a.name} mtu ${a.mtu} address ${a.hwAddr}${q} netns ${t.nsPath}`,
        o.bridge ? `link set ${a.device} master ${o.bridge} up` : `link set ${a.device} up`,
      ]);
      const l = await linkDetails(input.device);
      if (l?.ifindex) a.hostIndex = l.ifindex;
    }
    try {
      await ipBatchIn(t.nsPath, [
        `link set ${a.name} address ${a.hwAddr} mtu ${a.mtu}`,
        // The address brings its subnet route with it, as kata's note says.
        ...(a.address ? [`addr add ${a.address}/${a.prefix} dev ${a.name}`] : []),
        ...(a.address6 ? [`addr add ${a.address6}/${a.prefix6} dev ${a.name} nodad`] : []),
        `link set ${a.name} up`,
      ]);
      // Its index in the sandbox: the container may rename it, not renumber it.
      const inner = (await linksIn(t)).find((l) => l.ifname === a.name);
      if (inner?.ifindex) a.innerIndex = inner.ifindex;
    } catch (e) {
      await undoIface(t, a).catch(() => undefined);
      throw e;
    }
    rec.ifaces.push(a);
    saveRecord(o.stateDir, rec);
    return ifaceOutput(a);
  });
}

/**
 * Put the host back as it was before `a` was added. Only the very device
 * ocinet recorded is renamed, moved back or deleted (its index, and for a
 * device that came home its MAC), never whatever now has its name.
 */
async function undoIface(t: Target, a: AddedIface): Promise<void> {
  if (a.kind === 'tap') {
    if (t.vm) await vmDelIface(t.vm, a);
    return;
  }
  if (a.kind === 'veth') {
    // The pair dies with the namespace; a link of that name now may be someone else's.
    const l = await linkDetails(a.device);
    if (l && (a.hostIndex === undefined || l.ifindex === a.hostIndex)) await ipBatch([`link del ${a.device}`], true);
    return;
  }
  if (a.kind !== 'moved') return;
  if (alive(t)) {
    const inner = await linksIn(t);
    const dev = a.innerIndex !== undefined ? inner.find((l) => l.ifindex === a.innerIndex) : inner.find((l) => l.ifname === a.name);
    if (dev) await ipBatchIn(t.nsPath, [`link set ${dev.ifname} down`, `link set ${dev.ifname} netns /proc/${process.pid}/ns/net name ${a.device}`]);
  } else if (!linkExists(a.device)) {
    // A physical device comes home under whatever name it had in the sandbox when the namespace dies.
    const home = (await allLinkDetails()).find((l) =>
      a.hostIndex !== undefined ? l.ifindex === a.hostIndex && l.address === a.hwAddr : l.ifname === a.name && l.address === a.hwAddr && l.linkinfo?.info_kind !== 'bridge');
    if (home) await ipBatch([`link set ${home.ifname} down`, `link set ${home.ifname} name ${a.device}`], true);
  }
  if (linkExists(a.device)) {
    const restore = [a.origMac ? `address ${a.origMac}` : '', a.origMtu ? `mtu ${a.origMtu}` : ''].join(' ').trim();
    if (restore) await ipBatch([`link set ${a.device} ${restore}`], true);
  }
}

/** del-iface: by `name` only. Throws an error carrying the interface that could not be removed. */
export async function delIface(t: Target, name: string, stateDir: string): Promise<void> {
  await withSandboxLock(stateDir, t.key, async () => {
    const rec = loadRecord(stateDir, t);
    const a = rec.ifaces.find((i) => i.name === name);
    if (!a) throw new OcinetError('ENOTFOUND', `no interface '${name}' was added to this sandbox`);
    try {
      await undoIface(t, a);
    } catch (e) {
      throw Object.assign(new OcinetError('EEXEC', (e as Error).message), { iface: ifaceOutput(a) });
    }
    rec.ifaces = rec.ifaces.filter((i) => i !== a);
    rec.routes = rec.routes.filter((r) => r.device !== name);
    saveRecord(stateDir, rec);
  });
}

export async function listIfaces(t: Target, stateDir: string): Promise<ListedIface[] | null> {
  const rec = loadRecord(stateDir, t);
  if (rec.ifaces.length === 0) return null;
  const live = new Map((await linksIn(t)).map((l) => [l.ifname, l]));
  return rec.ifaces.map((a) => {
    const l = live.get(a.name);
    return {
      name: a.name,
      mac: l?.address ?? a.hwAddr,
      // Both families; IPv6 link-local addresses are the kernel's, not the interface's configuration.
      ip: (l?.addr_info ?? []).filter((x) => x.family === 'inet' || (x.family === 'inet6' && !x.local.startsWith('fe80:'))).map((x) => `${x.local}/${x.prefixlen}`),
      mtu: l?.mtu ?? a.mtu,
    };
  });
}

function routeLine(op: 'add' | 'del', r: RouteSpec): string {
  return `route ${op} ${canonicalDest(r.dest, 'route')}${r.gateway ? ` via ${r.gateway}` : ''}${r.device ? ` dev ${r.device}` : ''}`;
}

export async function addRoutes(t: Target, routes: RouteSpec[], stateDir: string): Promise<RouteSpec[]> {
  return withSandboxLock(stateDir, t.key, async () => {
    const rec = loadRecord(stateDir, t);
    const names = new Set((await linksIn(t)).map((l) => l.ifname));
    const existing = await routesIn(t);
    for (const r of routes) {
      if (!names.has(r.device!)) throw new OcinetError('ENOTFOUND', `route to ${r.dest}: device '${r.device}' is not in the sandbox`);
      const dst = canonicalDest(r.dest, 'route');
      const clash = existing.find((e) => e.dst === dst);
      if (clash) {
        const via = `${clash.gateway ? ` via ${clash.gateway}` : ''}${clash.dev ? ` dev ${clash.dev}` : ''}`;
        throw new OcinetError('ECONFLICT', `a route to ${r.dest} already exists (${dst}${via}); delete it first`);
      }
    }
    try {
      await batchIn(t, routes.map((r) => routeLine('add', r)));
    } catch (e) {
      // All of them were new (checked above): remove whichever got in before the failure.
      await forceBatchIn(t, routes.map((r) => routeLine('del', r)));
      throw e;
    }
    rec.routes.push(...routes);
    saveRecord(stateDir, rec);
    return routes;
  });
}

/** del-route: every route matching the fields given (fuzzy, as kata does). */
export async function delRoutes(t: Target, routes: RouteSpec[], stateDir: string): Promise<RouteSpec[]> {
  return withSandboxLock(stateDir, t.key, async () => {
    const rec = loadRecord(stateDir, t);
    const existing = await routesIn(t);
    const hits: IpRoute[] = [];
    for (const r of routes) {
      const dst = canonicalDest(r.dest, 'route');
      const m = existing.filter(
        (e) => e.dst === dst && (r.gateway === undefined || e.gateway === r.gateway) && (r.device === undefined || e.dev === r.device) && !hits.includes(e),
      );
      if (m.length === 0) throw new OcinetError('ENOTFOUND', `no route matches ${JSON.stringify(r)}`);
      hits.push(...m);
    }
    const deleted: RouteSpec[] = hits.map((e) => ({ dest: e.dst, ...(e.gateway ? { gateway: e.gateway } : {}), ...(e.dev ? { device: e.dev } : {}) }));
    await batchIn(t, deleted.map((r) => routeLine('del', r)));
    const gone = (r: RouteSpec): boolean =>
      deleted.some((d) => canonicalDest(d.dest, 'route') === canonicalDest(r.dest, 'route') && d.device === r.device && (d.gateway ?? '') === (r.gateway ?? ''));
    rec.routes = rec.routes.filter((r) => !gone(r));
    saveRecord(stateDir, rec);
    return deleted;
  });
}

/**
 * Undo every interface added to a sandbox and forget its record (container
 * teardown, gc). Takes the lock. An interface that cannot be undone stays in
 * the record, for gc to try again, and is named in the error thrown.
 */
export async function releaseSandbox(stateDir: string, t: Target, lockWaitMs = 30_000): Promise<void> {
  // Most sandboxes never had kata-network changes: no record, no lock to take.
  if (!hasRecord(stateDir, t.key)) return;
  await withSandboxLock(stateDir, t.key, async () => {
    if (!hasRecord(stateDir, t.key)) return;
    const rec = loadRecord(stateDir, t);
    const kept: AddedIface[] = [];
    const why: string[] = [];
    for (const a of [...rec.ifaces].reverse()) {
      try {
        await undoIface(t, a);
      } catch (e) {
        kept.push(a);
        why.push(`${a.name} (${a.device}): ${errorLine(e)}`);
      }
    }
    saveRecord(stateDir, { ...rec, ifaces: kept, routes: [], ipvsRules: 0 });
    if (why.length) throw new OcinetError('EEXEC', `could not remove interface ${why.join('; ')}; kept for 'ocinet gc'`);
  }, lockWaitMs);
}
