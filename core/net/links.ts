/**
 * Reading and deleting links over rtnetlink (the `netlink` package). Used by
 * the CLI, not by the hooks: loading netlink costs ~26 ms, more than the few
 * `ip` execs a hook needs.
 */
import { createRtNetlink } from 'netlink';
import { OcinetError } from '../base/errors.js';

export interface LinkRow {
  index: number;
  name: string;
  kind: string;
  master?: string;
  alias: string;
}

const IFLA_INFO_KIND = 1;

/** IFLA_LINKINFO is left unparsed by the package: read its IFLA_INFO_KIND attribute. */
function infoKind(buf: Buffer | undefined): string {
  let off = 0;
  while (buf && off + 4 <= buf.length) {
    const len = buf.readUInt16LE(off);
    const type = buf.readUInt16LE(off + 2) & 0x3fff;
    if (len < 4) break;
    if (type === IFLA_INFO_KIND) return buf.subarray(off + 4, off + len).toString('utf8').replace(/\0+$/, '');
    off += (len + 3) & ~3;
  }
  return '';
}

export async function withRtnl<T>(fn: (s: ReturnType<typeof createRtNetlink>) => Promise<T>): Promise<T> {
  const s = createRtNetlink();
  try {
    return await fn(s);
  } catch (e) {
    throw new OcinetError('EKERNEL', `netlink: ${(e as Error).message}`);
  } finally {
    s.socket.close();
  }
}

export async function listLinks(): Promise<LinkRow[]> {
  return withRtnl(async (s) => {
    const msgs = await s.getLinks();
    const byIndex = new Map(msgs.map((m) => [m.data.index, m.attrs.ifname ?? '']));
    return msgs.map((m) => {
      const row: LinkRow = {
        index: m.data.index ?? 0,
        name: m.attrs.ifname ?? '',
        kind: infoKind(m.attrs.linkinfo),
        alias: m.attrs.ifalias ?? '',
      };
      const master = m.attrs.master !== undefined ? byIndex.get(m.attrs.master) : undefined;
      if (master) row.master = master;
      return row;
    });
  });
}

export async function deleteLinks(indexes: number[]): Promise<void> {
  if (indexes.length === 0) return;
  await withRtnl(async (s) => {
    for (const index of indexes) await s.delLink({ index });
  });
}
