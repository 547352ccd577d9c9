/**
 * A sandbox as kata-network and kata-ipvs name it (a Target), and the record
 * kept per sandbox of what was added to it, so that del-iface, teardown and
 * gc undo exactly that.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { OcinetError } from '../base/errors.js';
import { netnsId } from '../net/netns.js';
import { shortHash } from '../state/names.js';
import type { AgentHold } from '../vm/agent-hold.js';
import type { VmSockets } from '../vm/hotplug.js';
import type { AddedIface, RouteSpec } from '../input/iface.js';

/**
 * A sandbox, however it was named on the command line: a container's network
 * namespace (nsPath/nsId), or a VM reached through QEMU's QMP and guest-agent
 * sockets (vm; nsPath and nsId are then empty).
 */
export interface Target {
  /** File key of the sandbox record: the namespace or VM identity, so every way of naming it meets. */
  key: string;
  nsPath: string;
  nsId: string;
  vm?: VmSockets;
  containerId?: string;
  pid?: number;
  /** A VM's agent connection: borrow a held one, and how long to keep this call's (never recorded). */
  agent?: AgentHold;
}

/** `t` with its VM's agent connection shared through the holders of `stateDir` (agent-hold.ts). */
export function sharingAgent(t: Target, stateDir: string, lingerMs = 0): Target {
  return t.vm ? { ...t, agent: { stateDir, key: t.key, lingerMs } } : t;
}

/** The VM's agent connection in `stateDir`: a held one borrowed, none kept (the hook's way). */
export function borrowedAgent(vm: VmSockets, stateDir: string): AgentHold {
  return sharingAgent(vmTarget(vm), stateDir).agent!;
}

export function vmTarget(vm: VmSockets, containerId?: string): Target {
  return { key: 'vm-' + shortHash(vm.qmp, 12), nsPath: '', nsId: '', vm, ...(containerId ? { containerId } : {}) };
}

export interface SandboxRecord {
  key: string;
  nsId: string;
  nsPath: string;
  vm?: VmSockets;
  containerId?: string;
  pid?: number;
  ifaces: AddedIface[];
  routes: RouteSpec[];
  /** IPVS rules (services + servers) last counted in the sandbox's table. */
  ipvsRules?: number;
  /** A VM's last one-entry ipvsadm command: ms it ran as the agent's polls saw it (where the next one's polls start). */
  ipvsadmMs?: number;
}

// ---- per-sandbox record ----

function recordDir(stateDir: string): string {
  return join(stateDir, 'sandboxes');
}

export function loadRecord(stateDir: string, t: Target): SandboxRecord {
  const p = join(recordDir(stateDir), `${t.key}.json`);
  const base: SandboxRecord = { key: t.key, nsId: t.nsId, nsPath: t.nsPath, ifaces: [], routes: [], ...(t.vm ? { vm: t.vm } : {}) };
  if (t.containerId) base.containerId = t.containerId;
  if (t.pid) base.pid = t.pid;
  if (!existsSync(p)) return base;
  try {
    const r = JSON.parse(readFileSync(p, 'utf8')) as SandboxRecord;
    return { ...r, nsPath: t.nsPath, ...(t.pid ? { pid: t.pid } : {}), ...(t.containerId && !r.containerId ? { containerId: t.containerId } : {}) };
  } catch {
    throw new OcinetError('ESTATE', `${p} is not valid JSON (remove it and run 'ocinet gc')`);
  }
}

export function saveRecord(stateDir: string, r: SandboxRecord): void {
  mkdirSync(recordDir(stateDir), { recursive: true, mode: 0o700 });
  const p = join(recordDir(stateDir), `${r.key}.json`);
  if (r.ifaces.length === 0 && r.routes.length === 0 && !r.ipvsRules) {
    if (existsSync(p)) unlinkSync(p);
    return;
  }
  // A setup reaches the namespace through a descriptor of its own (/proc/self/fd/N): store a path others can open.
  const stored = r.nsPath.startsWith('/proc/self/') && r.pid ? { ...r, nsPath: `/proc/${r.pid}/ns/net` } : r;
  writeFileSync(`${p}.tmp`, JSON.stringify(stored));
  renameSync(`${p}.tmp`, p);
}

export function allRecords(stateDir: string): SandboxRecord[] {
  const dir = recordDir(stateDir);
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .map((f) => JSON.parse(readFileSync(join(dir, f), 'utf8')) as SandboxRecord);
}

/** A sandbox record is alive while its namespace (or its VM's QMP socket) is. */
export function sandboxAlive(r: SandboxRecord): boolean {
  return r.vm ? existsSync(r.vm.qmp) : netnsId(r.nsPath) === r.nsId;
}

/** The target a stored sandbox record names. */
export function recordTarget(r: SandboxRecord): Target {
  return { key: r.key, nsPath: r.nsPath, nsId: r.nsId, ...(r.vm ? { vm: r.vm } : {}), ...(r.containerId ? { containerId: r.containerId } : {}) };
}

export function targetKey(nsId: string): string {
  return 'ns-' + nsId.replace(':', '-');
}

/** Whether sandbox `key` has a kata-network record. */
export function hasRecord(stateDir: string, key: string): boolean {
  return existsSync(join(recordDir(stateDir), `${key}.json`));
}
