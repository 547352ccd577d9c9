// Issue 11, part 4: ports published and unpublished on a running container
// (`ocinet publish` / `ocinet unpublish`), host address bindings and ranges,
// on each backend. A stand-in container answers HTTP on 80, 81 and 82; an
// outside host reaches the host at 192.0.2.1.
import t from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cli, hook, httpGet, inNs, outsideAndBaseline, readDb, sandbox, sh, snapshot, state, tempDir } from './lib/env.js';

const work = tempDir('publish');
for (const port of [80, 81, 82]) {
  mkdirSync(join(work, `www${port}`));
  writeFileSync(join(work, `www${port}`, 'index.html'), `port ${port}\n`);
}

const { outside, baseline } = await outsideAndBaseline(t, work);

const wget = httpGet;
const local = (port: number): Promise<string> => wget(`http://127.0.0.1:${port}/`);
const fromOutside = (port: number): Promise<string> => wget(`http://192.0.2.1:${port}/`, outside.sb.pid);

for (const backend of ['nftables', 'iptables']) {
  t.test(`${backend}: publish and unpublish on a running container`, async (t) => {
    const dir = join(work, `state-${backend}`);
    const NET = ['--state-dir', dir, '--subnet', '10.232.0.0/24', '--firewall', backend];
    const pub = (...args: string[]): ReturnType<typeof cli> => cli(['publish', '--state-dir', dir, ...args]);
    const unpub = (...args: string[]): ReturnType<typeof cli> => cli(['unpublish', '--state-dir', dir, ...args]);
    const sb = await sandbox();
    const other = await sandbox();
    t.teardown(async () => {
      await sb.kill();
      await other.kill();
    });
    for (const port of [80, 81, 82]) {
      const httpd = spawn('nsenter', [`--net=/proc/${sb.pid}/ns/net`, '--', 'busybox', 'httpd', '-f', '-p', String(port), '-h', join(work, `www${port}`)], { stdio: 'ignore' });
      t.teardown(() => void httpd.kill('SIGKILL'));
    }
    // c starts without ports (on iptables: no ports chain yet); o holds 9000.
    const up = await hook(NET, state('c', 'creating', sb.pid));
    t.equal(up.exitCode, 0, up.stderr);
    t.equal((await hook([...NET, '--publish', '9000:80'], state('o', 'creating', other.pid))).exitCode, 0);
    await inNs(sb.pid, ['ip', 'link', 'set', 'lo', 'up']);
    const bare = await snapshot();

    let r = await pub('c', '8080:80');
    t.equal(r.exitCode, 0, r.stderr);
    t.equal(r.stdout, 'c: 8080:80/tcp');
    t.equal(await local(8080), 'port 80', 'live publish: answers on 127.0.0.1');
    t.equal(await fromOutside(8080), 'port 80', 'live publish: answers from outside');

    // Refusals change nothing.
    const refused = async (what: string, run: () => Promise<{ exitCode: number; stderr: string }>, re: RegExp): Promise<void> => {
      const held = await snapshot(dir);
      const x = await run();
      t.equal(x.exitCode, 1, `${what}: exit 1`);
      t.match(x.stderr, re, `${what}: says why`);
      t.equal(x.stderr.trim().split('\n').length, 1, `${what}: one line`);
      t.equal(await snapshot(dir), held, `${what}: nothing changed`);
    };
    await refused('port of another live container', () => pub('c', '9100:80,9000:81'), /^ocinet: host port 9000\/tcp is already published by container o$/);
    await refused('binding under its wildcard', () => pub('c', '127.0.0.1:9000:81'), /already published by container o \(as 9000\/tcp\)/);
    await refused('published already', () => pub('c', '8080:80'), /^ocinet: 8080:80\/tcp is already published by container c$/);
    await refused('same port twice', () => pub('c', '8081:80,8081:81'), /host port 8081\/tcp is published twice/);
    await refused('not published', () => unpub('c', '8080:81'), /^ocinet: 8080:81\/tcp is not published by container c \(8080:80\/tcp\)$/);
    await refused('unknown id', () => pub('nope', '8085:80'), /^ocinet: no container 'nope' in ocinet's state$/);
    const bad: [string, RegExp][] = [
      ['80', /^ocinet: publish: '80' is not \[HOSTIP:\]HOSTPORT/],
      ['8000-8002:80-81', /maps 3 host ports to 2 container ports/],
      ['8002-8000:82-80', /host port range 8002-8000 in '8002-8000:82-80' is reversed/],
      ['1024-3024:1024-3024', /has 2001 ports, more than 1000/],
      ['localhost:8085:80', /host address 'localhost' in 'localhost:8085:80' is not an IPv4 address/],
      ['0:80', /host port 0 in '0:80' is outside 1-65535/],
      ['8085:80/sctp', /is not \[HOSTIP:\]HOSTPORT/],
      ['8085:80,', /'' is not \[HOSTIP:\]/],
      ['', /publish: no port named/],
    ];
    for (const [spec, re] of bad) await refused(`bad spec '${spec}'`, () => pub('c', spec), re);
    await refused('bad spec to unpublish', () => unpub('c', '8080'), /^ocinet: unpublish: '8080' is not/);
    await refused('no spec', () => pub('c'), /^ocinet: usage: ocinet publish ID SPEC\[,SPEC\.\.\.\]$/);

    // A binding to 127.0.0.1 answers there only; one to the host's address there only.
    r = await pub('c', '127.0.0.1:8090:80,192.0.2.1:8091:81');
    t.equal(r.exitCode, 0, r.stderr);
    t.equal(await local(8090), 'port 80', '127.0.0.1:8090:80 answers on 127.0.0.1');
    t.equal(await fromOutside(8090), '', '127.0.0.1:8090:80 does not answer on 192.0.2.1 from outside');
    t.equal(await fromOutside(8091), 'port 81', '192.0.2.1:8091:81 answers on 192.0.2.1 from outside');
    t.equal(await local(8091), '', '192.0.2.1:8091:81 does not answer on 127.0.0.1');
    t.equal(await wget('http://192.0.2.1:8091/', sb.pid), 'port 81', 'hairpin to a host address binding');
    // Another address of the same port may go to another container.
    r = await cli(['publish', '--state-dir', dir, 'o', '127.0.0.1:8091:80']);
    t.equal(r.exitCode, 0, r.stderr);
    await refused('a wildcard over a binding', () => cli(['publish', '--state-dir', dir, 'o', '8090:81']), /^ocinet: host port 8090\/tcp is already published by container c \(as 127\.0\.0\.1:8090\/tcp\)$/);

    // A range: one mapping per port.
    r = await pub('c', '8100-8102:80-82');
    t.equal(r.exitCode, 0, r.stderr);
    for (const i of [0, 1, 2]) {
      t.equal(await fromOutside(8100 + i), `port ${80 + i}`, `range: 192.0.2.1:${8100 + i} from outside`);
      t.equal(await local(8100 + i), `port ${80 + i}`, `range: 127.0.0.1:${8100 + i}`);
    }
    const list = await cli(['list', '--state-dir', dir]);
    t.match(list.stdout, /^c +10\.232\.0\.\d+\/24 +ocinet0 +8080:80\/tcp,127\.0\.0\.1:8090:80\/tcp,192\.0\.2\.1:8091:81\/tcp,8100:80\/tcp,8101:81\/tcp,8102:82\/tcp +\d+ +running$/m, 'list: [HOSTIP:]H:C/proto');
    t.same((readDb(dir).containers.o as unknown as { ports: unknown[] }).ports, [{ hostPort: 9000, containerPort: 80, proto: 'tcp' }, { hostPort: 8091, containerPort: 80, proto: 'tcp', hostIp: '127.0.0.1' }]);

    // Unpublish: it stops, the rest keeps answering.
    r = await unpub('c', '8080:80,8101:81');
    t.equal(r.exitCode, 0, r.stderr);
    t.equal(r.stdout, 'c: 127.0.0.1:8090:80/tcp,192.0.2.1:8091:81/tcp,8100:80/tcp,8102:82/tcp');
    t.equal(await local(8080), '', 'unpublished: 127.0.0.1:8080 stops');
    t.equal(await fromOutside(8080), '', 'unpublished: 192.0.2.1:8080 from outside stops');
    t.equal(await fromOutside(8101), '', 'unpublished: one port of the range');
    t.equal(await fromOutside(8100), 'port 80', 'the others still answer');
    t.equal(await local(8090), 'port 80');

    // All of c's ports away: the kernel is as before c had any; then publish again (no doubled jump).
    t.equal((await unpub('c', '127.0.0.1:8090:80,192.0.2.1:8091:81,8100:80,8102:82')).exitCode, 0);
    t.equal((await unpub('o', '127.0.0.1:8091:80')).exitCode, 0);
    t.equal(await snapshot(), bare, 'after unpublishing everything published live, the rules are as before');
    t.equal((await pub('c', '8080:80')).exitCode, 0);
    t.equal((await pub('c', '8081:81/udp')).exitCode, 0, 'udp');
    t.equal(await fromOutside(8080), 'port 80', 'published again');
    if (backend === 'iptables') {
      const jumps = (await sh('iptables-save', ['-t', 'nat'])).stdout.split('\n').filter((l) => l.startsWith('-A OCINET-DNAT ') && l.includes('ocinet:'));
      t.equal(jumps.length, 2, 'one jump per container with ports');
    }

    // A container sharing c's namespace, and a dead one, are refused.
    t.equal((await hook(NET, state('j', 'creating', sb.pid))).exitCode, 0);
    await refused('a sharer', () => pub('j', '8200:80'), /^ocinet: container j shares the network namespace of c: publish its ports there$/);
    await other.kill();
    // Its namespace dies a moment later, and its veth with it.
    const oVeth = readDb(dir).containers.o!.hostVeth!;
    for (let i = 0; i < 200 && (await sh('ip', ['link', 'show', oVeth], { reject: false })).exitCode === 0; i++) await new Promise((r) => setTimeout(r, 25));
    await refused('a dead container', () => pub('o', '8201:80'), /^ocinet: container o is not running \(its process is gone\): run 'ocinet gc'$/);

    for (const id of ['j', 'c', 'o']) t.equal((await hook(NET, state(id, 'stopped'))).exitCode, 0, `teardown ${id}`);
    t.equal(await snapshot(), baseline, 'teardown after live publishes leaves nothing');
  });
}
