// Bundles each command of `entries` with esbuild into dist/bin as three files:
//   NAME        what runs: hooks/loader.cts, starting with an absolute node shebang because
//               runc's `"env": []` leaves hooks without PATH;
//   NAME.js     the command's bundle (CommonJS, unminified: it loads faster here; ASCII), its
//               first line a build id (a hash of its code);
//   NAME.cache  V8's code cache of NAME.js, made by build/code-cache.mjs, tied to that id.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
execFileSync(process.execPath, [join(root, 'build/gen-validators.mjs')], { stdio: 'inherit' });
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const node = process.env.OCINET_NODE ?? process.execPath;
const out = join(root, 'dist/bin');
mkdirSync(out, { recursive: true });
writeFileSync(join(root, 'dist/package.json'), '{ "type": "commonjs" }\n');

// native.node (build/native/*.c): N-API only, so Node's own headers and cc suffice.
const nodeInclude = join(dirname(dirname(process.execPath)), 'include/node');
const nativeSrc = join(root, 'build/native');
try {
  const sources = readdirSync(nativeSrc).filter((f) => f.endsWith('.c')).map((f) => join(nativeSrc, f));
  execFileSync(process.env.CC ?? 'cc', ['-O2', '-Wall', '-Werror', '-shared', '-fPIC', `-I${nodeInclude}`, '-o', join(out, 'native.node'), ...sources, '-ldl'], { stdio: 'inherit' });
} catch (e) {
  console.error(`build: cannot compile build/native (needs cc and Node's headers in ${nodeInclude}): ${e.message}`);
  process.exit(1);
}

const common = { bundle: true, platform: 'node', target: 'node20', format: 'cjs', minify: false, legalComments: 'none', logLevel: 'warning' };
// netlink's JS on its own (build/netlink-external.cjs loads it), finding netlink.node beside itself.
await build({
  ...common,
  entryPoints: [join(root, 'node_modules/netlink/dist/index.js')],
  outfile: join(out, 'netlink.js'),
  alias: { 'node-gyp-build': join(root, 'build/netlink-binding.cjs') },
});

const entries = { 'ocinet-hook': 'hooks/hook.ts', ocinet: 'hooks/cli.ts', 'ocinet-cni': 'hooks/cni.ts' };
for (const [name, src] of Object.entries(entries)) {
  const [bundle] = (
    await build({
      ...common,
      entryPoints: [join(root, src)],
      outfile: join(out, `${name}.js`),
      write: false,
      // import.meta.url is the bundle's own URL (core/base/native.ts finds native.node beside it).
      banner: { js: `'use strict';\nvar __ocinet_bundle_url = require('node:url').pathToFileURL(__filename).href;` },
      define: { OCINET_VERSION: JSON.stringify(pkg.version), OCINET_BUNDLED: 'true', 'import.meta.url': '__ocinet_bundle_url' },
      alias: { 'node-gyp-build': join(root, 'build/netlink-binding.cjs'), netlink: join(root, 'build/netlink-external.cjs') },
    })
  ).outputFiles;
  // What esbuild leaves non-ASCII (comments; it escapes strings) as \u escapes: V8 keeps an ASCII
  // source as one byte a character, and the loader reads it so.
  const code = bundle.text.replace(/[^\0-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  const id = createHash('sha256').update(code).digest('hex').slice(0, 16);
  writeFileSync(bundle.path, `// ocinet-build ${id}\n${code}`);
  chmodSync(bundle.path, 0o644);
  await build({
    ...common,
    entryPoints: [join(root, 'hooks/loader.cts')],
    outfile: join(out, name),
    banner: { js: `#!${node}` },
    define: { OCINET_ENTRY: JSON.stringify(name) },
  });
  chmodSync(join(out, name), 0o755);
}
copyFileSync(join(root, 'node_modules/netlink/prebuilds/linux-x64/node.napi.node'), join(out, 'netlink.node'));

// The code caches, made by the node the bundles run with, with no environment (as runc runs hooks:
// V8 takes a cache only from the same node under the same V8 flags); then each checked to be taken.
const sizes = [];
for (const name of Object.keys(entries)) {
  const loader = join(out, name);
  try {
    execFileSync(node, [join(root, 'build/code-cache.mjs'), loader], { env: {}, stdio: ['ignore', 'ignore', 'inherit'], timeout: 60_000 });
    const check = `process.stdout.write(require(${JSON.stringify(loader)}).compileBundle(${JSON.stringify(`${loader}.js`)}, ${JSON.stringify(`${loader}.cache`)}).cache)`;
    const use = execFileSync(node, ['-e', check], { env: {}, encoding: 'utf8', timeout: 60_000 });
    if (use !== 'used') throw new Error(`the loader did not take it (${use})`);
  } catch (e) {
    console.error(`build: code cache of dist/bin/${name}: ${e.message}`);
    process.exit(1);
  }
  sizes.push(`${name} ${Math.round(readFileSync(`${loader}.cache`).length / 1024)} KiB`);
}
console.log(`built ${[...Object.keys(entries), 'netlink.js'].map((n) => 'dist/bin/' + n).join(', ')} (node ${node}; code caches: ${sizes.join(', ')})`);
