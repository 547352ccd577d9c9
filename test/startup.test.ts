// What a command's start costs, without timing it: each command in dist/bin runs its bundle from
// V8's code cache (hooks/loader.cts, build/code-cache.mjs), a missing, damaged, stale or foreign
// cache only costs the compile, and --version loads none of the built-ins a real run loads later.
// Nothing here touches the network.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cleanup, ROOT, tempDir } from './lib/env.js';

const BIN = join(ROOT, 'dist/bin');
/** Every command build/build.mjs made: NAME (the loader), NAME.js (the bundle), NAME.cache. */
const COMMANDS = readdirSync(BIN)
  .filter((f) => f.endsWith('.js') && f !== 'netlink.js') // netlink's JS is a library the CLI loads, not a command
  .map((f) => f.slice(0, -3));
/** The node of the commands' shebang: the one their caches were made by. */
const NODE = readFileSync(join(BIN, 'ocinet-hook'), 'utf8').split('\n')[0]!.slice(2);
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const HEADER = 32; // the cache file's header, before V8's payload twice (hooks/loader.cts)

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a program with no environment at all, as runc runs a hook. Through `env -i`: tap gives the
 * children of a test its own NODE_OPTIONS (its loaders), even when asked for an empty environment.
 */
function bare(file: string, args: string[], input?: string): Run {
  const r = spawnSync('env', ['-i', file, ...args], { encoding: 'utf8', ...(input !== undefined ? { input } : {}) });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** Runs a command; with nodeArgs, through its node and those flags. */
function run(file: string, args: string[], nodeArgs?: string[]): Run {
  return nodeArgs ? bare(NODE, [...nodeArgs, file, ...args]) : bare(file, args);
}

/** How the loader dir/NAME compiles its bundle: 'used' (its cache), 'rejected' (by V8) or 'none'. */
function cacheUse(dir: string, name: string, nodeArgs: string[] = []): string {
  const loader = join(dir, name);
  const js = `process.stdout.write(require(${JSON.stringify(loader)}).compileBundle(${JSON.stringify(`${loader}.js`)}, ${JSON.stringify(`${loader}.cache`)}).cache)`;
  const r = bare(NODE, [...nodeArgs, '-e', js]);
  return r.stdout || r.stderr;
}

/**
 * Whether running dir/NAME deserialized its own code cache: V8's --profile-deserialization (which
 * V8 leaves out of the flags a cache must match) prints the size of each code cache it reads.
 */
function deserializedOwnCache(file: string, cacheFile: string): boolean {
  const payload = (statSync(cacheFile).size - HEADER) / 2;
  return run(file, ['--version'], ['--profile-deserialization']).stdout.includes(`[Deserializing from ${payload} bytes`);
}

function versionOk(t: Test, r: Run, name: string, what: string): void {
  t.equal(r.code, 0, `${what}: exit 0 (${r.signal ?? ''}${r.stderr})`);
  t.equal(r.stdout, `${name} ${VERSION}\n`, `${what}: prints its version`);
  t.equal(r.stderr, '', `${what}: says nothing else`);
}

t.test('every command in dist/bin runs with its code cache', async (t) => {
  t.ok(COMMANDS.includes('ocinet-hook') && COMMANDS.includes('ocinet'), `commands: ${COMMANDS.join(', ')}`);
  for (const name of COMMANDS) {
    const cache = join(BIN, `${name}.cache`);
    t.ok(existsSync(join(BIN, name)) && existsSync(cache), `${name}: loader, bundle and cache`);
    t.equal(statSync(cache).mode & 0o022, 0, `${name}.cache: writable by its owner alone`);
    t.equal(cacheUse(BIN, name), 'used', `${name}: the loader takes its cache`);
    versionOk(t, run(join(BIN, name), ['--version']), name, name);
    t.ok(deserializedOwnCache(join(BIN, name), cache), `${name}: its run deserializes the cache`);
  }
});

t.test('installed as make install lays it out, run through the link', async (t) => {
  const prefix = tempDir('startup-install');
  t.teardown(() => cleanup(prefix));
  const lib = join(prefix, 'lib/ocinet/bin');
  mkdirSync(join(prefix, 'bin'));
  cpSync(BIN, lib, { recursive: true });
  cpSync(join(ROOT, 'dist/package.json'), join(prefix, 'lib/ocinet/package.json'));
  symlinkSync('../lib/ocinet/bin/ocinet-hook', join(prefix, 'bin/ocinet-hook'));
  const link = join(prefix, 'bin/ocinet-hook');
  versionOk(t, run(link, ['--version']), 'ocinet-hook', 'through the link');
  t.ok(deserializedOwnCache(link, join(lib, 'ocinet-hook.cache')), 'through the link, with the cache beside the real file');
  // A real run (setup) still finds what lies beside the bundle: it fails on the state, not on loading.
  const r = bare(link, ['setup'], '{}');
  t.equal(r.code, 1);
  t.match(r.stderr, /^ocinet-hook: state: /);
});

t.test('--version loads neither child_process, net nor crypto (a real run loads them where it needs them)', async (t) => {
  const dir = tempDir('startup-modules');
  t.teardown(() => cleanup(dir));
  const preload = join(dir, 'modules.cjs');
  // fs.writeSync: process.stderr would load net itself, stderr being a pipe.
  writeFileSync(preload, `process.on('exit', () => require('node:fs').writeSync(2, JSON.stringify(process.moduleLoadList)));\n`);
  for (const name of COMMANDS) {
    const r = run(join(BIN, name), ['--version'], ['--require', preload]);
    t.equal(r.code, 0, r.stderr);
    const loaded = JSON.parse(r.stderr) as string[];
    for (const m of ['child_process', 'net', 'crypto']) t.notOk(loaded.includes(`NativeModule ${m}`), `${name} --version: no ${m}`);
  }
});

t.test('a missing, damaged, stale or foreign cache only costs the compile', async (t) => {
  const dir = tempDir('startup-cache');
  t.teardown(() => cleanup(dir));
  const bin = join(dir, 'bin');
  cpSync(BIN, bin, { recursive: true });
  cpSync(join(ROOT, 'dist/package.json'), join(dir, 'package.json'));
  const name = 'ocinet-hook';
  const loader = join(bin, name);
  const cache = `${loader}.cache`;
  const bundle = `${loader}.js`;
  const good = readFileSync(cache);
  const goodBundle = readFileSync(bundle, 'utf8');
  const damaged = (at: number): Buffer => {
    const b = Buffer.from(good);
    for (let i = at; i < at + 64; i++) b[i] ^= 0x5a;
    return b;
  };

  const cases: { what: string; make: () => void; expect: string; nodeArgs?: string[] }[] = [
    { what: 'the copy as it is', make: () => {}, expect: 'used' },
    { what: 'removed', make: () => rmSync(cache), expect: 'none' },
    { what: 'empty', make: () => writeFileSync(cache, ''), expect: 'none' },
    { what: 'only its header', make: () => writeFileSync(cache, good.subarray(0, HEADER)), expect: 'none' },
    { what: 'truncated', make: () => writeFileSync(cache, good.subarray(0, good.length >> 1)), expect: 'none' },
    // V8 checks sizes, not content: handed these, it crashes (SIGSEGV). The loader compares the copies.
    { what: 'first copy damaged, header intact', make: () => writeFileSync(cache, damaged(HEADER + 4096)), expect: 'none' },
    { what: 'second copy damaged', make: () => writeFileSync(cache, damaged(good.length - 4096)), expect: 'none' },
    { what: 'zeros where the file ends', make: () => writeFileSync(cache, Buffer.concat([good.subarray(0, good.length - 4096), Buffer.alloc(4096)])), expect: 'none' },
    { what: 'garbage of the same size', make: () => writeFileSync(cache, Buffer.alloc(good.length, 0xa5)), expect: 'none' },
    { what: "another command's cache", make: () => writeFileSync(cache, readFileSync(join(BIN, 'ocinet.cache'))), expect: 'none' },
    {
      what: 'stale (the bundle rebuilt since, same length)',
      make: () => writeFileSync(bundle, goodBundle.replace(/^(\/\/ ocinet-build [0-9a-f]{15})([0-9a-f])/, (_, head: string, last: string) => head + (last === '0' ? '1' : '0'))),
      expect: 'none',
    },
    { what: 'writable by others', make: () => chmodSync(cache, 0o666), expect: 'none' },
    { what: 'writable by its group', make: () => chmodSync(cache, 0o664), expect: 'none' },
    {
      what: 'a directory',
      make: () => {
        rmSync(cache);
        mkdirSync(cache);
      },
      expect: 'none',
    },
    { what: 'made under other V8 flags than this run', make: () => {}, expect: 'rejected', nodeArgs: ['--stack-size=500'] },
  ];
  if (process.getuid?.() === 0) cases.push({ what: "owned by another user than root or the bundle's owner", make: () => chownSync(cache, 65534, 65534), expect: 'none' });

  for (const c of cases) {
    rmSync(cache, { recursive: true, force: true });
    writeFileSync(cache, good);
    chmodSync(cache, 0o644);
    writeFileSync(bundle, goodBundle);
    c.make();
    const before = existsSync(cache) && statSync(cache).isFile() ? readFileSync(cache) : null;
    t.equal(cacheUse(bin, name, c.nodeArgs), c.expect, `${c.what}: ${c.expect}`);
    const r = c.nodeArgs ? run(loader, ['--version'], c.nodeArgs) : run(loader, ['--version']);
    t.equal(r.code, 0, `${c.what}: exit 0 (${r.signal ?? ''}${r.stderr})`);
    t.equal(r.stdout, `${name} ${VERSION}\n`, `${c.what}: prints its version`);
    if (!c.nodeArgs) t.equal(r.stderr, '', `${c.what}: silently`);
    const after = existsSync(cache) && statSync(cache).isFile() ? readFileSync(cache) : null;
    t.same(after, before, `${c.what}: the run leaves the cache as it was (a command never writes it)`);
  }
});
