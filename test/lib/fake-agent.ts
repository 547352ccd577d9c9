/** A stand-in QEMU guest agent on a unix socket, for tests of the clients and their bounds. */
import net from 'node:net';

export interface AgentMessage {
  execute: string;
  arguments?: { id?: number; path?: string; arg?: string[]; pid?: number };
  id?: string;
}

export interface FakeAgent {
  close(): void;
  /** The commands received, in order. */
  requests: string[];
  /** Connections accepted so far. */
  connections(): number;
}

/** Each request (one JSON line, after any 0xFF sync byte) goes to `answer`, which writes its reply, or none. */
export function fakeAgent(path: string, answer: (c: net.Socket, msg: AgentMessage) => void): FakeAgent {
  const requests: string[] = [];
  const conns = new Set<net.Socket>();
  let accepted = 0;
  const server = net.createServer((c) => {
    conns.add(c);
    accepted++;
    let buf = '';
    c.on('error', () => undefined);
    c.on('data', (d) => {
      buf += d.toString('latin1');
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        const start = line.indexOf('{');
        if (start < 0) continue;
        const msg = JSON.parse(line.slice(start)) as AgentMessage;
        requests.push(msg.execute);
        answer(c, msg);
      }
    });
  });
  server.listen(path);
  return {
    requests,
    connections: () => accepted,
    close: () => {
      for (const c of conns) c.destroy();
      server.close();
    },
  };
}

/** Write one reply line. */
export function reply(c: net.Socket, body: object): void {
  c.write(JSON.stringify(body) + '\n');
}
