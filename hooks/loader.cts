/**
 * What each command in dist/bin starts as (ocinet-hook, ocinet, ...): it runs the command's bundle
 * beside it, NAME.js, compiled with NAME.cache, the V8 code cache that `make build` made by running
 * the bundle once (build/code-cache.mjs). Compiling the hook's bundle from source costs ~4 ms of
 * each start; from the cache, ~1 ms.
 *
 * The cache is used only when it is this very bundle's (the build id on the bundle's first line),
 * intact, and owned by root or the bundle's owner and writable by no one else. V8 itself refuses a
 * cache made by another node or under other V8 flags (`cachedDataRejected`), or for a source of
 * another length, but it does not check a cache's content, and a damaged one crashes it. So the file
 * holds V8's payload twice and the loader hands it over only when the two copies are equal: a
 * memcmp, microseconds, where a checksum would cost more than the cache saves (a JS loop 1-2 ms for
 * 64 KiB, WebAssembly's compile 0.4 ms to several under load, zlib or crypto ~2 ms to load).
 * Whatever is wrong with a cache, the bundle is compiled from source: a cache never makes a command
 * fail, and nothing here writes one.
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Script } from 'node:vm';

/** The command's name, set per entry by build/build.mjs. */
declare const OCINET_ENTRY: string;

/** How a bundle was compiled: with its cache, with a cache V8 refused, or from source alone. */
export type CacheUse = 'used' | 'rejected' | 'none';

// NAME.cache: MAGIC (8 bytes), the build id (16), the payload's length (u32 LE), 4 zero bytes, then
// the payload (what V8's createCachedData gave) twice.
const MAGIC = 'ocinetV8';
const HEADER = 32;
const MAX_CACHE = 64 << 20;
const BUILD_ID = /^\/\/ ocinet-build ([0-9a-f]{16})\n/;
// The bundle runs as a CommonJS module would: the same wrapper, with this module's require.
const WRAP_HEAD = '(function (exports, require, module, __filename, __dirname) {';
const WRAP_TAIL = '\n})';

type BundleFn = (this: unknown, exports: unknown, require: NodeJS.Require, module: NodeJS.Module, filename: string, dirname: string) => void;

/** The id build/build.mjs put on a bundle's first line (`// ocinet-build <16 hex>`), if any. */
export function buildIdOf(source: string): string | undefined {
  return BUILD_ID.exec(source)?.[1];
}

/** NAME.cache's content for a payload of V8's code cache of the bundle with build id `id`. */
export function sealCache(payload: Uint8Array, id: string): Buffer {
  const out = Buffer.alloc(HEADER + 2 * payload.length);
  out.write(MAGIC + id, 0, 'latin1');
  out.writeUInt32LE(payload.length, 24);
  out.set(payload, HEADER);
  out.set(payload, HEADER + payload.length);
  return out;
}

/** The cache's payload when it may be handed to V8, else undefined (and the bundle compiles from source). */
function readCache(file: string, source: string, bundle: string): Uint8Array | undefined {
  const id = buildIdOf(source);
  if (id === undefined) return undefined;
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r');
    const st = fstatSync(fd);
    if (!st.isFile() || st.size < HEADER || st.size > MAX_CACHE) return undefined;
    // Code in a cache runs as the bundle would: no one who cannot write the bundle may write it.
    if ((st.mode & 0o022) !== 0 || (st.uid !== 0 && st.uid !== statSync(bundle).uid)) return undefined;
    const buf = Buffer.allocUnsafeSlow(st.size);
    if (readSync(fd, buf, 0, st.size, 0) !== st.size) return undefined;
    const length = buf.readUInt32LE(24);
    if (buf.toString('latin1', 0, 24) !== MAGIC + id || HEADER + 2 * length !== st.size) return undefined;
    const payload = buf.subarray(HEADER, HEADER + length);
    return payload.equals(buf.subarray(HEADER + length)) ? payload : undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Compiles a bundle, with its code cache when `cacheFile` names a usable one. */
export function compileBundle(bundle: string, cacheFile: string | null): { script: Script; source: string; cache: CacheUse } {
  const source = readFileSync(bundle, 'utf8');
  const cachedData = cacheFile === null ? undefined : readCache(cacheFile, source, bundle);
  const script = new Script(WRAP_HEAD + source + WRAP_TAIL, { filename: bundle, cachedData });
  return { script, source, cache: cachedData === undefined ? 'none' : script.cachedDataRejected === true ? 'rejected' : 'used' };
}

/** Runs a compiled bundle as the main module would run (its require, module, __filename is the bundle). */
export function runBundle(script: Script, bundle: string): void {
  const fn = script.runInThisContext() as BundleFn;
  fn.call(module.exports, module.exports, require, module, bundle, dirname(bundle));
}

if (require.main === module) {
  // __dirname is the real directory (node resolves the link $PREFIX/bin/NAME), where NAME.js lies.
  const bundle = join(__dirname, `${OCINET_ENTRY}.js`);
  runBundle(compileBundle(bundle, join(__dirname, `${OCINET_ENTRY}.cache`)).script, bundle);
}
