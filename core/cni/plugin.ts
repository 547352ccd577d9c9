/**
 * ocinet-cni's calling convention (CNI spec 1.1): the command from the
 * environment, the configuration from stdin, the result or the spec's error
 * JSON on stdout. Inputs are checked in the spec's order (environment,
 * decoding, version, configuration) before anything is touched, so each
 * refusal carries the spec's code and changes nothing.
 */
import { errorLine, isOcinetError, type ErrorCode } from '../base/errors.js';
import {
  CniError, CNI_CODE, CNI_VERSIONS, cniVersionOf, decodeCniConfig, parseCniConfig, parseCniEnv, type CniCommand, type CniConfig, type CniEnv, type CniVersion,
} from '../input/cni.js';
import { OpLog } from '../state/log.js';
import { cniRecordId } from '../state/store.js';
import { cniAdd, cniDel } from './attach.js';
import { cniCheck } from './check.js';
import { cniGc, cniStatus } from './network.js';

export interface CniOutcome {
  /** What goes to stdout (nothing for DEL, CHECK, GC and STATUS that succeed). */
  stdout: string;
  exitCode: number;
}

/** ocinet's error codes as CNI codes: the spec's where one fits, else ocinet's own (100 and up, docs/cni.md). */
const CODE_OF: Record<ErrorCode, number> = {
  EINPUT: CNI_CODE.invalidConfig,
  ECONFLICT: 100,
  EEXHAUSTED: 101,
  ENOTFOUND: CNI_CODE.unknownContainer,
  ESELFNS: CNI_CODE.invalidEnvironment,
  EEXEC: 102,
  ELOCK: CNI_CODE.tryAgainLater,
  ESTATE: CNI_CODE.ioFailure,
  EDAMAGED: CNI_CODE.ioFailure,
  EKERNEL: 103,
};

const json = (v: unknown): string => JSON.stringify(v) + '\n';

function failure(e: unknown, version: CniVersion): CniOutcome {
  const code = e instanceof CniError ? e.cniCode : isOcinetError(e) ? CODE_OF[e.code] : 999;
  const msg = errorLine(e);
  return { stdout: json({ cniVersion: version, code, msg, ...(isOcinetError(e) ? { details: `ocinet ${e.code}` } : {}) }), exitCode: 1 };
}

/** VERSION answers whatever the input: in the input's version when it is one of ours. */
function versionReply(text: string): string {
  let asked: unknown;
  try {
    asked = (JSON.parse(text) as { cniVersion?: unknown }).cniVersion;
  } catch {
    asked = undefined;
  }
  const cniVersion = (CNI_VERSIONS as readonly unknown[]).includes(asked) ? asked : CNI_VERSIONS[CNI_VERSIONS.length - 1];
  return json({ cniVersion, supportedVersions: CNI_VERSIONS });
}

export async function runCni(env: NodeJS.ProcessEnv, readStdin: () => string, warn: (line: string) => void): Promise<CniOutcome> {
  let version: CniVersion = '1.1.0';
  let req: CniEnv;
  let cfg: CniConfig;
  try {
    req = parseCniEnv(env);
    const text = readStdin();
    if (req.command === 'VERSION') return { stdout: versionReply(text), exitCode: 0 };
    const raw = decodeCniConfig(text);
    version = cniVersionOf(raw, req.command);
    cfg = parseCniConfig(raw, version, req);
  } catch (e) {
    return failure(e, version);
  }
  const log = new OpLog(cfg.logFile, warn);
  const op = `cni-${req.command.toLowerCase()}`;
  const id = req.containerId ? cniRecordId(req.containerId, req.ifname!) : cfg.name;
  try {
    return { stdout: await COMMANDS[req.command as Exclude<CniCommand, 'VERSION'>](cfg, req, log, op, id), exitCode: 0 };
  } catch (e) {
    if (req.command === 'ADD' || req.command === 'DEL') log.write({ op, id, ok: false, error: errorLine(e), code: isOcinetError(e) ? e.code : 'EUNKNOWN' });
    return failure(e, version);
  }
}

/** What each command prints on success (ADD its result; the others nothing), VERSION aside. */
const COMMANDS: Record<Exclude<CniCommand, 'VERSION'>, (cfg: CniConfig, req: CniEnv, log: OpLog, op: string, id: string) => Promise<string>> = {
  async ADD(cfg, req, log, op, id) {
    const result = await cniAdd(cfg, req, log);
    log.write({ op, id, ok: true, network: cfg.name, ip: result.ips.map((i) => i.address).join(',') });
    return json(result);
  },
  async DEL(cfg, req, log, op, id) {
    const r = await cniDel(cfg, req, log);
    log.write({ op, id, ok: true, network: cfg.name, removed: r.removed, bridgeRemoved: r.bridgeRemoved, ...(r.skipped ? { skipped: r.skipped } : {}) });
    return '';
  },
  CHECK: (cfg, req) => cniCheck(cfg, req).then(() => ''),
  GC: (cfg, _req, log) => cniGc(cfg, log).then(() => ''),
  STATUS: (cfg) => cniStatus(cfg).then(() => ''),
};
