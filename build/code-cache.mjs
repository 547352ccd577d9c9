// Makes dist/bin/NAME.cache: V8's code cache of dist/bin/NAME.js, which the loader dist/bin/NAME
// (hooks/loader.cts) compiles it with. `node build/code-cache.mjs dist/bin/NAME`, run by
// build/build.mjs with the node the bundles run with. The cache is taken when a run of
// `NAME --version` ends, so it holds the functions every start compiles, not only the top level;
// the bundle and the cache's format are the loader's own (compileBundle, runBundle, sealCache).
import { chmodSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const loaderPath = process.argv[2];
const loader = createRequire(import.meta.url)(loaderPath);
const bundle = `${loaderPath}.js`;
const { script, source } = loader.compileBundle(bundle, null);
const id = loader.buildIdOf(source);
if (id === undefined) throw new Error(`${bundle} has no build id on its first line`);
// However the run ends (a command may refuse --version): the functions it compiled are what counts,
// and build/build.mjs checks afterwards that the loader takes the cache.
process.on('exit', () => {
  const tmp = `${loaderPath}.cache.tmp`;
  writeFileSync(tmp, loader.sealCache(script.createCachedData(), id));
  chmodSync(tmp, 0o644); // root's (or the builder's) alone: the loader refuses a cache others may write
  renameSync(tmp, `${loaderPath}.cache`);
  process.exitCode = 0;
});
process.argv = [process.argv[0], loaderPath, '--version'];
loader.runBundle(script, bundle);
