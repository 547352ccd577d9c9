/**
 * The one interface the sandbox code speaks to for rules, whatever the
 * backend: a network's rules (masquerade, forwarding, the localhost guard),
 * a container's own (its port guard and published ports), their removal,
 * and gc. Backends: iptables/ (iptables-restore + ebtables-restore) and
 * nftables/ (one `nft -f -` transaction each).
 */
import type { Backend, ContainerRecord, PortMapping } from '../state/store.js';

export interface NetworkRules {
  /** The state dir's identity (names.ts stateId): every rule and name carries it. */
  sid: string;
  bridge: string;
  subnet: string;
  /** Dual stack: the network's IPv6 subnet (nftables only). */
  subnet6?: string;
}

export interface Firewall {
  readonly backend: Backend;
  /**
   * Install a network's rules, and what this state dir's networks share when
   * missing; a network's leftovers are replaced. `others`: how many other
   * networks of this state dir use this backend.
   */
  installNetwork(n: NetworkRules, others: number): Promise<void>;
  /** Remove a network's rules (idempotent); what networks share goes with the last one. */
  removeNetwork(n: Pick<NetworkRules, 'sid' | 'bridge'> & { subnet?: string; subnet6?: string }, others: number): Promise<void>;
  /** A new container's port guard and published ports (its record names them). */
  addContainer(sid: string, rec: ContainerRecord, subnet: string, allowSpoofing: boolean): Promise<void>;
  /**
   * A running container's published ports changed from `before` to
   * `rec.ports` (ocinet publish/unpublish): the kernel follows, all at once
   * or not at all. An iptables record names its ports chain (`chain`, `tag`).
   */
  setPorts(sid: string, rec: ContainerRecord, before: PortMapping[], subnet: string): Promise<void>;
  /** Remove the records' own rules, all at once where the backend can; idempotent. */
  removeContainers(sid: string, recs: ContainerRecord[]): Promise<void>;
  /** gc: remove this state dir's per-container rules that none of `keep` holds; says what went. */
  purgeStale(sid: string, keep: ContainerRecord[]): Promise<string[]>;
  /**
   * Put the records' rules back after someone flushed them (reload):
   * whatever is still there is not doubled.
   */
  reapplyContainers(sid: string, recs: ContainerRecord[], subnetOf: (r: ContainerRecord) => string): Promise<void>;
  /** What of a container's own rules (port guard, published ports) is missing; empty when all are there (ocinet-cni CHECK). */
  containerMissing(sid: string, rec: ContainerRecord): Promise<string[]>;
  /** Whether a network's rules are all there (doctor). */
  networkPresent(n: NetworkRules): Promise<boolean>;
}
