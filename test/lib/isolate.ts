/**
 * Every test file runs in a network (and mount) namespace of its own: the
 * first time it is loaded it re-executes itself under `unshare`, so no test
 * can touch the machine's own network, and test files can run in parallel.
 * A pid namespace too, so everything a test started (runc containers
 * included) dies with it even when the test is killed.
 */
import { spawnSync } from 'node:child_process';
import { execFileSync } from 'node:child_process';

export function isolate(file: string): void {
  if (process.env.OCINET_TEST_ISOLATED === '1') {
    execFileSync('ip', ['link', 'set', 'lo', 'up']);
    return;
  }
  const r = spawnSync(
    'unshare',
    ['--net', '--mount', '--propagation', 'private', '--pid', '--fork', '--kill-child', '--mount-proc', '--', process.execPath, ...process.execArgv, file],
    { stdio: 'inherit', env: { ...process.env, OCINET_TEST_ISOLATED: '1' } },
  );
  process.exit(r.status ?? 1);
}
