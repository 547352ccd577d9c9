/**
 * native.node (build/native/*.c): what Node cannot do and the hooks need on
 * their start path without running a program: flock(2), rtnetlink requests
 * (also inside a container's namespace) and libnftables transactions; and a
 * guest agent connection passed between calls (SCM_RIGHTS).
 * Loaded once, on first use, from beside the bundle.
 */
import { fileURLToPath } from 'node:url';
import { OcinetError } from './errors.js';

/** One request's answer: 0 or the kernel's errno, and what it sent before its acknowledgement. */
export interface RtnlAnswer {
  error: number;
  replies: Buffer[];
}

/** What libnftables said: nft's exit code, its output and its errors. */
export interface NftAnswer {
  code: number;
  out: string;
  err: string;
}

export interface Native {
  /** The locked descriptor, or -1 while another open file holds the lock. */
  lock(path: string): number;
  /** A NETLINK_ROUTE socket in the namespace open at nsFd (-1: the caller's), close-on-exec. */
  rtnlSocket(nsFd: number): number;
  /** Each message with an acknowledgement, in order, up to the first refused. */
  rtnlTalk(fd: number, messages: Buffer[]): RtnlAnswer[];
  /** A link deletion sent by a detached process; returns once `ifname` is gone (0) or with an errno. */
  rtnlDetached(message: Buffer, ifname: string, timeoutMs: number): number;
  /** One transaction through libnftables, or null when the library cannot be loaded. */
  nftRun(text: string, detach: boolean): NftAnswer | null;
  /** A connection to the unix socket at path (close-on-exec), or -errno. */
  agentConnect(path: string, timeoutMs: number): number;
  /** [agentFd, leaseFd] lent by the holder at holdPath (closing leaseFd gives it back), or -errno. */
  agentTake(holdPath: string, agentPath: string, timeoutMs: number): [number, number] | number;
  /** Hands fd to a detached holder at holdPath for lingerMs after each loan: 0, or an errno. */
  agentHold(fd: number, holdPath: string, lingerMs: number): number;
}

// Set by build/build.mjs: bundles load the addon from beside themselves, sources from dist/bin.
declare const OCINET_BUNDLED: boolean | undefined;

let addon: Native | undefined;

/** Where the addon is loaded from (for `ocinet doctor` and messages). */
export function nativePath(): string {
  return fileURLToPath(new URL(typeof OCINET_BUNDLED === 'boolean' ? 'native.node' : '../../dist/bin/native.node', import.meta.url));
}

export function native(): Native {
  if (addon) return addon;
  const mod = { exports: {} as Native };
  try {
    process.dlopen(mod, nativePath());
  } catch (e) {
    throw new OcinetError('EKERNEL', `cannot load ${nativePath()} (run 'make build'): ${(e as Error).message.split('\n')[0]}`);
  }
  return (addon = mod.exports);
}
