// Issue 11: surviving a firewall flush. On each backend, a container with a
// published port and masquerade; someone flushes the rules (`iptables -F`
// and `ebtables -F`, or `nft flush ruleset`); doctor says what is missing;
// `ocinet reload` puts it all back, twice without doubling anything.
import t from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cli, hook, httpGet, inNs, outsideAndBaseline, sandbox, sh, snapshot, state, tempDir } from './lib/env.js';

const work = tempDir('reload');
const www = join(work, 'www');
mkdirSync(www);
writeFileSync(join(www, 'index.html'), 'hello from the container\n');

const { outside, baseline } = await outsideAndBaseline(t, work);

const wget = httpGet;

const FLUSH: Record<string, [string, string[]][]> = {
  iptables: [['iptables', ['-t', 'nat', '-F']], ['iptables', ['-F']], ['ebtables', ['-t', 'nat', '-F']]],
  nftables: [['nft', ['flush', 'ruleset']]],
};

for (const backend of ['nftables', 'iptables']) {
  t.test(`${backend}: a flush takes the rules, reload puts them back, idempotently`, async (t) => {
    const dir = join(work, `state-${backend}`);
    const NET = ['--state-dir', dir, '--subnet', '10.231.0.0/24', '--firewall', backend];
    const sb = await sandbox();
    t.teardown(() => sb.kill());
    const httpd = spawn('nsenter', [`--net=/proc/${sb.pid}/ns/net`, '--', 'busybox', 'httpd', '-f', '-p', '80', '-h', www], { stdio: 'ignore' });
    t.teardown(() => void httpd.kill('SIGKILL'));
    const up = await hook([...NET, '--publish', '8080:80'], state('c', 'creating', sb.pid));
    t.equal(up.exitCode, 0, up.stderr);
    await inNs(sb.pid, ['ip', 'link', 'set', 'lo', 'up']);
    const works = async (what: string): Promise<void> => {
      t.equal(await wget('http://127.0.0.1:8080/'), 'hello from the container', `${what}: published port via 127.0.0.1`);
      t.equal(await wget('http://192.0.2.1:8080/', outside.sb.pid), 'hello from the container', `${what}: published port from outside`);
      t.equal(await wget('http://192.0.2.2:7000/', sb.pid), 'peer=192.0.2.1', `${what}: masquerade`);
    };
    await works('before');
    const doctor = async (): Promise<{ ok: boolean; detail: string } | undefined> =>
      (JSON.parse((await cli(['doctor', '--json', '--state-dir', dir])).stdout) as { name: string; ok: boolean; detail: string }[]).find((c) => c.name.startsWith('rules of the networks'));
    t.equal((await doctor())?.ok, true, 'doctor: the rules are there');

    for (const [prog, args] of FLUSH[backend]!) await sh(prog, args);
    t.not(await wget('http://127.0.0.1:8080/'), 'hello from the container', 'after the flush the published port is gone');
    const d = await doctor();
    t.equal(d?.ok, false, 'doctor sees it');
    t.match(d?.detail, `missing for ocinet0 (${backend})`);

    const r = await cli(['reload', '--json', '--state-dir', dir]);
    t.equal(r.exitCode, 0, r.stderr);
    t.same(JSON.parse(r.stdout), { networks: ['ocinet0'], containers: ['c'], errors: [] });
    await works('after reload');
    t.equal((await doctor())?.ok, true, 'doctor: all there again');
    const once = await snapshot(dir);
    t.equal((await cli(['reload', '--state-dir', dir])).exitCode, 0);
    t.equal(await snapshot(dir), once, 'a second reload changes nothing (no rule doubled)');
    await works('after the second reload');

    t.equal((await hook(NET, state('c', 'stopped'))).exitCode, 0);
    t.equal(await snapshot(), baseline, 'teardown leaves nothing');
  });
}

t.test('reload with nothing in the state, and on a bad state dir', async (t) => {
  const dir = join(work, 'state-empty');
  const r = await cli(['reload', '--state-dir', dir]);
  t.equal(r.exitCode, 0, r.stderr);
  t.equal(r.stdout, 'networks: none\ncontainers: none');
  const bad = await cli(['reload', '--state-dir', 'relative/dir']);
  t.equal(bad.exitCode, 1);
  t.match(bad.stderr, /^ocinet: --state-dir 'relative\/dir' must be an absolute path$/);
  t.equal(await snapshot(), baseline);
});
