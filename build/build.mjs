// Bundles the hook and the CLI with esbuild into dist/bin (CommonJS, unminified:
// it loads faster here), each starting with an absolute node shebang because
// runc's `"env": []` leaves hooks without PATH.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
execFileSync(process.execPath, [join(root, 'build/gen-validators.mjs')], { stdio: 'inherit' });
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const node = process.env.OCINET_NODE ?? process.execPath;
const out = join(root, 'dist/bin');
mkdirSync(out, { recursive: true });
writeFileSync(join(root, 'dist/package.json'), '{ "type": "commonjs" }\n');

// The lock addon (build/lock.c): N-API only, so Node's own headers and cc suffice.
const nodeInclude = join(dirname(dirname(process.execPath)), 'include/node');
try {
  execFileSync(process.env.CC ?? 'cc', ['-O2', '-Wall', '-Werror', '-shared', '-fPIC', `-I${nodeInclude}`, '-o', join(out, 'lock.node'), join(root, 'build/lock.c')], { stdio: 'inherit' });
} catch (e) {
  console.error(`build: cannot compile build/lock.c (needs cc and Node's headers in ${nodeInclude}): ${e.message}`);
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

const entries = { 'ocinet-hook': 'hooks/hook.ts', ocinet: 'hooks/cli.ts' };
for (const [name, src] of Object.entries(entries)) {
  await build({
    ...common,
    entryPoints: [join(root, src)],
    outfile: join(out, name),
    // import.meta.url is the bundle's own URL (core/lock.ts finds lock.node beside it).
    banner: { js: `#!${node}\n'use strict';\nvar __ocinet_bundle_url = require('node:url').pathToFileURL(__filename).href;` },
    define: { OCINET_VERSION: JSON.stringify(pkg.version), OCINET_BUNDLED: 'true', 'import.meta.url': '__ocinet_bundle_url' },
    alias: { netlink: join(root, 'build/netlink-external.cjs') },
  });
  chmodSync(join(out, name), 0o755);
}
copyFileSync(join(root, 'node_modules/netlink/prebuilds/linux-x64/node.napi.node'), join(out, 'netlink.node'));
console.log(`built ${[...Object.keys(entries), 'netlink.js'].map((n) => 'dist/bin/' + n).join(', ')} (node ${node})`);
