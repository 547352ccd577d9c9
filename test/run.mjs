// Runs the tap suite and closes with the line CI reads: `N passed, N failed`,
// counted from tap's own final summary of the real results.
import { spawn } from 'node:child_process';

const root = new URL('..', import.meta.url).pathname;
const args = process.argv.slice(2);
const child = spawn('npx', ['tap', ...args], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
let tail = '';
child.stdout.on('data', (b) => {
  process.stdout.write(b);
  tail = (tail + b.toString()).slice(-4096);
});
child.on('close', (code) => {
  // tap ends with e.g. `# { total: 273, pass: 270, fail: 2, skip: 1 }`
  const m = [...tail.matchAll(/# \{ total: (\d+)([^}]*)\}/g)].pop();
  const field = (name) => Number((m?.[2].match(new RegExp(`${name}: (\\d+)`)) ?? [])[1] ?? 0);
  const passed = field('pass');
  let failed = field('fail');
  if (!m || (code !== 0 && failed === 0)) failed += 1; // tap died or a file crashed: count it
  const skipped = field('skip') + field('todo');
  console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
  process.exit(code === 0 && failed === 0 ? 0 : 1);
});
