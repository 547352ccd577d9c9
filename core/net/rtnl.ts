/**
 * rtnetlink requests sent from the hook's own process (native.node), not
 * through `ip`: the requests on a container's start and stop path (its veth
 * pair, its side's address and routes, the pair's removal) cost two program
 * starts less. Messages are built here as `ip` builds them, with the
 * kernel's constants (linux/rtnetlink.h, if_link.h, veth.h). veth.ts puts
 * them together.
 */
import { closeSync } from 'node:fs';
import { getSystemErrorMap } from 'node:util';
import { OcinetError } from '../base/errors.js';
import { native, type RtnlAnswer } from '../base/native.js';

const RTM_NEWLINK = 16;
const RTM_DELLINK = 17;
const RTM_GETLINK = 18;
const RTM_NEWADDR = 20;
const RTM_NEWROUTE = 24;
const NLM_F_REPLACE = 0x100;
const NLM_F_EXCL = 0x200;
const NLM_F_CREATE = 0x400;
const AF_UNSPEC = 0;
const AF_INET = 2;
const AF_INET6 = 10;
const IFF_UP = 1;
const IFLA_ADDRESS = 1;
const IFLA_IFNAME = 3;
const IFLA_MTU = 4;
const IFLA_MASTER = 10;
const IFLA_LINKINFO = 18;
const IFLA_NET_NS_FD = 28;
const IFLA_INFO_KIND = 1;
const IFLA_INFO_DATA = 2;
const IFLA_INFO_SLAVE_KIND = 4;
const IFLA_INFO_SLAVE_DATA = 5;
const VETH_INFO_PEER = 1;
const IFLA_BRPORT_MODE = 4; // hairpin
const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;
const IFA_FLAGS = 8;
const IFA_F_NODAD = 0x02;
const RTA_OIF = 4;
const RTA_GATEWAY = 5;
const RT_TABLE_MAIN = 254;
const RTPROT_BOOT = 3;
const RTN_UNICAST = 1;

// Netlink is in the host's byte order.
const LITTLE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const u16 = (b: Buffer, v: number, at: number): number => (LITTLE ? b.writeUInt16LE(v, at) : b.writeUInt16BE(v, at));
const u32 = (b: Buffer, v: number, at: number): number => (LITTLE ? b.writeUInt32LE(v >>> 0, at) : b.writeUInt32BE(v >>> 0, at));
const readU32 = (b: Buffer, at: number): number => (LITTLE ? b.readUInt32LE(at) : b.readUInt32BE(at));
const align = (n: number): number => (n + 3) & ~3;

/** One attribute (rtattr): its payload, padded to 4 bytes. */
function attr(type: number, payload: Buffer): Buffer {
  const b = Buffer.alloc(align(4 + payload.length));
  u16(b, 4 + payload.length, 0);
  u16(b, type, 2);
  payload.copy(b, 4);
  return b;
}
const nest = (type: number, attrs: Buffer[]): Buffer => attr(type, Buffer.concat(attrs));
const str = (type: number, s: string): Buffer => attr(type, Buffer.from(`${s}\0`, 'ascii'));
const int32 = (type: number, v: number): Buffer => {
  const b = Buffer.alloc(4);
  u32(b, v, 0);
  return attr(type, b);
};
const mac = (type: number, m: string): Buffer => attr(type, Buffer.from(m.split(':').map((x) => parseInt(x, 16))));

/** An address's bytes (dotted IPv4, or IPv6 in any form `ip` accepts that ocinet writes). */
export function addrBytes(ip: string): Buffer {
  if (!ip.includes(':')) return Buffer.from(ip.split('.').map(Number));
  const [head, tail] = ip.split('::') as [string, string?];
  const words = (s: string | undefined): number[] => (s ? s.split(':').map((w) => parseInt(w, 16)) : []);
  const h = words(head);
  const t = words(tail);
  const all = tail === undefined ? h : [...h, ...Array<number>(8 - h.length - t.length).fill(0), ...t];
  const b = Buffer.alloc(16);
  all.forEach((w, i) => b.writeUInt16BE(w, i * 2));
  return b;
}

/** struct ifinfomsg. */
function ifinfo(index = 0, flags = 0, change = 0): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt8(AF_UNSPEC, 0);
  u32(b, index, 4);
  u32(b, flags, 8);
  u32(b, change, 12);
  return b;
}

/** A whole request: header, the family's struct, attributes (the addon sets seq and the ack flag). */
function message(type: number, flags: number, head: Buffer, attrs: Buffer[] = []): Buffer {
  const body = Buffer.concat([head, ...attrs]);
  const b = Buffer.alloc(16 + body.length);
  u32(b, b.length, 0);
  u16(b, type, 4);
  u16(b, flags, 6);
  body.copy(b, 16);
  return b;
}

/** The index of the link a GETLINK answer describes. */
export function linkIndex(answer: RtnlAnswer, name: string): number {
  const reply = answer.replies[0];
  if (!reply || reply.length < 16 + 16) throw new OcinetError('EEXEC', `rtnetlink: no description of link ${name} in the kernel's answer`);
  return readU32(reply, 16 + 4);
}

/** What the kernel refused, as one line: a failed step, as a failed `ip` was (EEXEC). */
function refused(what: string, errno: number): OcinetError {
  const [name, text] = getSystemErrorMap().get(-errno) ?? [`errno ${errno}`, ''];
  return new OcinetError('EEXEC', `rtnetlink: ${what}: ${name}${text ? ` (${text})` : ''}`);
}

/** A request, and what it does (for messages). */
export interface Step {
  what: string;
  msg: Buffer;
}

/** Messages in order on a socket; an error names the first refused. */
export function talk(fd: number, steps: Step[]): RtnlAnswer[] {
  const answers = native().rtnlTalk(fd, steps.map((s) => s.msg));
  const bad = answers.findIndex((a) => a.error !== 0);
  if (bad >= 0) throw refused(steps[bad]!.what, answers[bad]!.error);
  return answers;
}

/** A socket in the namespace open at nsFd (-1: the hook's own), closed after fn. */
export function withSocket<T>(nsFd: number, fn: (fd: number) => T): T {
  const n = native();
  let fd: number;
  try {
    fd = n.rtnlSocket(nsFd);
  } catch (e) {
    throw new OcinetError('EKERNEL', (e as Error).message);
  }
  try {
    return fn(fd);
  } finally {
    closeSync(fd);
  }
}

export const getLink = (name: string): Step => ({ what: `link ${name}`, msg: message(RTM_GETLINK, 0, ifinfo(), [str(IFLA_IFNAME, name)]) });

/** A veth pair: its host side up on `master`, its peer under its final name straight in the namespace open at nsFd. */
export function newVeth(p: { name: string; mac: string; mtu: number; master: number; peer: string; peerMac: string; nsFd: number }): Buffer {
  const peer = Buffer.concat([ifinfo(), str(IFLA_IFNAME, p.peer), mac(IFLA_ADDRESS, p.peerMac), int32(IFLA_MTU, p.mtu), int32(IFLA_NET_NS_FD, p.nsFd)]);
  const linkinfo = nest(IFLA_LINKINFO, [str(IFLA_INFO_KIND, 'veth'), nest(IFLA_INFO_DATA, [attr(VETH_INFO_PEER, peer)])]);
  return message(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, ifinfo(0, IFF_UP, IFF_UP), [str(IFLA_IFNAME, p.name), mac(IFLA_ADDRESS, p.mac), int32(IFLA_MTU, p.mtu), int32(IFLA_MASTER, p.master), linkinfo]);
}

/** `link set NAME master MASTER up`, by name. */
export const enslave = (name: string, master: number): Buffer => message(RTM_NEWLINK, 0, ifinfo(0, IFF_UP, IFF_UP), [str(IFLA_IFNAME, name), int32(IFLA_MASTER, master)]);

/** `link set NAME type bridge_slave hairpin on`. */
export const hairpin = (name: string): Buffer =>
  message(RTM_NEWLINK, 0, ifinfo(), [str(IFLA_IFNAME, name), nest(IFLA_LINKINFO, [str(IFLA_INFO_SLAVE_KIND, 'bridge'), nest(IFLA_INFO_SLAVE_DATA, [attr(IFLA_BRPORT_MODE, Buffer.from([1]))])])]);

/** `link set NAME up`, by name. */
export const upByName = (name: string): Buffer => message(RTM_NEWLINK, 0, ifinfo(0, IFF_UP, IFF_UP), [str(IFLA_IFNAME, name)]);

/** `link set dev up`, by index. */
export const upByIndex = (index: number): Buffer => message(RTM_NEWLINK, 0, ifinfo(index, IFF_UP, IFF_UP));

export interface Address {
  ip: string;
  prefix: number;
}

/** `addr add IP/PREFIX dev`; IPv6 without duplicate address detection. */
export function addAddress(index: number, a: Address): Buffer {
  const six = a.ip.includes(':');
  const head = Buffer.alloc(8);
  head.writeUInt8(six ? AF_INET6 : AF_INET, 0);
  head.writeUInt8(a.prefix, 1);
  head.writeUInt8(six ? IFA_F_NODAD : 0, 2);
  u32(head, index, 4);
  const ip = addrBytes(a.ip);
  return message(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, head, [attr(IFA_LOCAL, ip), attr(IFA_ADDRESS, ip), ...(six ? [int32(IFA_FLAGS, IFA_F_NODAD)] : [])]);
}

/** `route replace default via GATEWAY dev`. */
export function defaultRoute(index: number, gateway: string): Buffer {
  const head = Buffer.alloc(12);
  head.writeUInt8(gateway.includes(':') ? AF_INET6 : AF_INET, 0);
  head.writeUInt8(RT_TABLE_MAIN, 4);
  head.writeUInt8(RTPROT_BOOT, 5);
  head.writeUInt8(RTN_UNICAST, 7);
  return message(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, head, [attr(RTA_GATEWAY, addrBytes(gateway)), int32(RTA_OIF, index)]);
}

const ENODEV = 19; // Linux's errno numbers, as the kernel answers

const delLink = (name: string): Buffer => message(RTM_DELLINK, 0, ifinfo(), [str(IFLA_IFNAME, name)]);

/**
 * Delete link `name` of the hook's namespace (a veth takes its peer along).
 * The kernel unlists it at once and frees it after an RCU barrier that the
 * sender waits for (~20 ms); a detached process sends it, and this returns
 * once the name is gone. False when it was not there.
 */
export function removeLink(name: string): boolean {
  const e = native().rtnlDetached(delLink(name), name, 2000);
  if (e === 0) return true;
  if (e === ENODEV) return false;
  throw refused(`deleting ${name}`, e);
}
