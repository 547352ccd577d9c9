/**
 * What a setup is asked to do: the network (the hook entry's flags) and the
 * container's own requests (annotations), once validated (config.ts).
 */
import { type RestoreSet } from './ipvs-rules.js';
import { type IfaceInput, type RouteSpec } from './iface.js';
import { type AnnotationPolicy } from './policy.js';
import { type CniAttachment, type PortMapping } from '../state/store.js';
import type { BackendChoice } from '../firewall/backends.js';

export interface NetworkOptions {
  stateDir: string;
  bridge: string;
  subnet: string;
  /** Interface name inside the container. */
  iface: string;
  mtu: number;
  /** Keep the bridge and its NAT rules when the last container leaves. */
  keepBridge: boolean;
  /** The firewall backend of a new network (a known network keeps its own); default auto. */
  firewall?: BackendChoice;
  /** Dual stack: the network's IPv6 subnet (canonical); absent, IPv4 only. */
  subnet6?: string;
}

export interface SetupRequest extends NetworkOptions {
  id: string;
  pid: number;
  /** The runtime's bundle path, recorded so that teardown acts only for this container. */
  bundle?: string;
  ports: PortMapping[];
  ip?: string;
  /** A static IPv6 address (io.ocinet.ip6), on a network with subnet6. */
  ip6?: string;
  /**
   * What the container itself asked for (annotations), as opposed to the
   * admin defaults of the hook entry: a container joining another's
   * namespace inherits its network, so only its own requests conflict.
   */
  requested?: { ports: boolean; ip: boolean };
  /** Extra interfaces and routes (io.ocinet.interfaces / io.ocinet.routes), added after eth0. */
  interfaces?: IfaceInput[];
  routes?: RouteSpec[];
  /** veth (default): a container's namespace; tap: a QEMU VM reached through QMP and its guest agent. */
  mode?: 'veth' | 'tap';
  vm?: { qmp?: string; qga?: string };
  /** Which of `vm` an annotation named (held to the policy). */
  vmAnnotated?: { qmp: boolean; qga: boolean };
  /** IPVS rules to restore once the network is up (io.ocinet.ipvs). */
  ipvs?: RestoreSet;
  /** What annotations may ask for (the hook entry's); absent: the defaults. */
  policy?: AnnotationPolicy;
  /** --allow-spoofing: the port guard keeps only its router-advertisement drops. */
  allowSpoofing?: boolean;
  /**
   * A CNI attachment (ocinet-cni): recorded with it; another attachment in the
   * same namespace is an interface of its own, never a sharer.
   */
  cni?: CniAttachment;
}
