// The README's demo command and the examples' demos must keep working: each
// runs its own throwaway namespace, real runc (and the test guest for the
// VM one), and exits non-zero when a step fails.
import t from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { join } from 'node:path';
import { ROOT, sh } from './lib/env.js';

for (const demo of ['two-containers', 'port-forward', 'namespace-sharing', 'qemu-sandbox']) {
  t.test(`examples/${demo}/demo.sh`, async (t) => {
    const r = await sh('timeout', ['300', 'bash', join(ROOT, 'examples', demo, 'demo.sh')], { reject: false });
    t.equal(r.exitCode, 0, r.stderr.split('\n').slice(-3).join(' | '));
    t.match(r.stdout, /passed/, 'it says it passed');
  });
}
