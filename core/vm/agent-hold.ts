/**
 * A guest agent connection kept between calls, as ssh's ControlPersist keeps
 * a connection. qemu-ga on a virtio-serial port reads its port only every
 * 100 ms while no host client is connected (it sleeps between reads), so a
 * call on a new connection waits up to 100 ms for the agent's first answer.
 * A call that ends with a working connection hands it to a detached holder
 * (build/native/agent.c) that lends it to the next call over a socket in the
 * state dir's agent/ (root's, 0700; the holder lends only to its own user),
 * one call at a time, and closes it after `lingerMs` without a call, as
 * soon as QEMU closes it, or when a borrower found it stopped answering.
 *
 * While it is held, QEMU serves no other client on that socket: a client
 * that is not ocinet waits up to `lingerMs` for it. Calls that share the
 * state dir borrow it instead. A lent connection may carry replies to the
 * call before (it was killed, or did not wait for a reply): QgaClient drops
 * replies whose ids are not its own and resets the agent's parser first.
 */
import { closeSync, mkdirSync, writeSync } from 'node:fs';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { getSystemErrorName } from 'node:util';
import { native } from '../base/native.js';
import { connectFailure } from './qmp.js';

export interface AgentHold {
  /** The state dir: its agent/ holds the holders' sockets. */
  stateDir: string;
  /** The sandbox's key (one holder per VM). */
  key: string;
  /** After the call, keep the connection this long for the next one (ms); 0: use a held one, keep none. */
  lingerMs: number;
}

/**
 * The CLI's --agent-hold when not given: none. Held by default, CI once saw a
 * 20000-rule restore's guest-exec reply never arrive (the rules went in), and
 * so did 2 of about 20 runs of the VM tests here; the cause is not found yet,
 * so holding is the admin's choice until it is.
 */
export const DEFAULT_LINGER_MS = 0;

/**
 * How a call leaves its agent connection. `answered`: the agent answered and nothing
 * is pending. `unasked`: no reply was heard. `stuck`: a request went unanswered, or
 * one is still pending (its reply would reach the next call).
 */
export type AgentLinkState = 'answered' | 'unasked' | 'stuck';

/** An open agent connection, and how it ends. */
export interface AgentLink {
  sock: Socket;
  /**
   * Closes the call's end of it. A borrowed one goes back, unless `stuck`; a new one
   * that `answered` goes to a holder when the hold asks.
   */
  end(state: AgentLinkState): void;
}

/** What a borrower writes on its lease for "close it, do not lend it again". */
const DROP = new Uint8Array([1]);

const holdPath = (h: AgentHold): string => join(h.stateDir, 'agent', `${h.key}.sock`);

function socketOn(fd: number): Socket {
  // node:net only here: a hook that configures no VM never loads it.
  const { Socket: NetSocket } = process.getBuiltinModule('node:net');
  return new NetSocket({ fd, readable: true, writable: true });
}

/** The agent socket at `path`: a held connection when there is one, else a new one. */
export function openAgentLink(path: string, timeoutMs: number, hold?: AgentHold): AgentLink {
  const n = native();
  if (hold) {
    // No holder, a dead one's file, a holder still lending past the timeout, or one of
    // another agent: none is an error, the call connects itself.
    const lent = n.agentTake(holdPath(hold), path, timeoutMs);
    if (typeof lent !== 'number') {
      const [fd, lease] = lent;
      const sock = socketOn(fd);
      return {
        sock,
        end(state) {
          sock.destroy();
          // A connection that stopped answering (or was left mid-reply) is not lent again: one
          // byte on the lease tells the holder to close it, so the next call connects anew.
          if (state === 'stuck') {
            try {
              writeSync(lease, DROP);
            } catch {
              /* the holder is gone: so is its connection */
            }
          }
          closeSync(lease);
        },
      };
    }
  }
  const fd = n.agentConnect(path, timeoutMs);
  if (fd < 0) throw connectFailure('guest agent', path, getSystemErrorName(fd), timeoutMs);
  const sock = socketOn(fd);
  return {
    sock,
    end(state) {
      if (state === 'answered' && hold && hold.lingerMs > 0) {
        try {
          mkdirSync(join(hold.stateDir, 'agent'), { recursive: true, mode: 0o700 });
          // An errno (another holder got there first, a path too long) only means no hold.
          n.agentHold(fd, holdPath(hold), hold.lingerMs);
        } catch {
          /* the call is done either way */
        }
      }
      sock.destroy();
    },
  };
}
