// Bundles the hook and the CLI with esbuild into dist/bin (CommonJS, unminified:
// it loads faster here), each starting with an absolute node shebang because
// runc's `"env": []` leaves hooks without PATH.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
execFileSync(process.execPath, [join(root, 'build/gen-validators.mjs')], { stdio: 'inherit' });
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const node = process.env.OCINET_NODE ?? process.execPath;
const out = join(root, 'dist/bin');
mkdirSync(out, { recursive: true });
writeFileSync(join(root, 'dist/package.json'), '{ "type": "commonjs" }\n');

const entries = { 'ocinet-hook': 'hooks/hook.ts', ocinet: 'hooks/cli.ts' };
for (const [name, src] of Object.entries(entries)) {
  await build({
    entryPoints: [join(root, src)],
    outfile: join(out, name),
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    minify: false,
    legalComments: 'none',
    banner: { js: `#!${node}` },
    define: { OCINET_VERSION: JSON.stringify(pkg.version) },
    alias: { 'node-gyp-build': join(root, 'build/netlink-binding.cjs') },
    logLevel: 'warning',
  });
  chmodSync(join(out, name), 0o755);
}
copyFileSync(join(root, 'node_modules/netlink/prebuilds/linux-x64/node.napi.node'), join(out, 'netlink.node'));
console.log(`built ${Object.keys(entries).map((n) => 'dist/bin/' + n).join(', ')} (node ${node})`);
