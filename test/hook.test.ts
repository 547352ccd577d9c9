// The hook binary against real kernel objects, with stand-in sandboxes
// (processes in their own network namespace): contract, bad input,
// concurrency, leaks, crashes, namespace sharing, gc.
import t from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { CLI, cleanup, cli, hook, HOOK, inNs, readDb, sandbox, sh, sleep, snapshot, state, tempDir } from './lib/env.js';

const SUBNET = ['--subnet', '10.213.0.0/24'];

t.test('setup gives eth0, address, route; teardown removes all (crun-shaped state)', async (t) => {
  const dir = tempDir('basic');
  const before = await snapshot(dir);
  const sb = await sandbox();
  // crun: status 'created', an extra 'root' field.
  const r = await hook(['--state-dir', dir, ...SUBNET], state('c1', 'created', sb.pid, { root: '/run/crun/c1', extraField: { a: 1 } }));
  t.equal(r.exitCode, 0, r.stderr);
  const res = JSON.parse(r.stdout) as { ip: string; gateway: string };
  t.equal(res.ip, '10.213.0.2');
  t.equal(res.gateway, '10.213.0.1');
  const addr = (await inNs(sb.pid, ['ip', '-4', '-o', 'addr', 'show', 'eth0'])).stdout;
  t.match(addr, /inet 10\.213\.0\.2\/24/);
  t.match((await inNs(sb.pid, ['ip', 'route'])).stdout, /default via 10\.213\.0\.1 dev eth0/);
  t.equal((await inNs(sb.pid, ['busybox', 'ping', '-c1', '-W2', '10.213.0.1'], false)).exitCode, 0, 'container pings gateway');
  t.equal((await sh('cat', ['/proc/sys/net/ipv4/ip_forward'])).stdout, '1');
  // crun's poststop: pid 0, status stopped.
  const d = await hook(['--state-dir', dir, ...SUBNET], state('c1', 'stopped', 0, { root: '/run/crun/c1' }));
  t.equal(d.exitCode, 0, d.stderr);
  t.equal(await snapshot(dir), before, 'namespace back to its starting state');
  const again = await hook(['--state-dir', dir, ...SUBNET, 'teardown'], state('c1', 'stopped'));
  t.equal(again.exitCode, 0, 'second teardown is a no-op');
  await sb.kill();
  cleanup(dir);
});

t.test('bad input: one clear line, exit non-zero, nothing changed', async (t) => {
  const dir = tempDir('bad');
  const sb = await sandbox();
  const other = await sandbox();
  const okSetup = await hook(['--state-dir', dir, ...SUBNET, '--publish', '9000:80'], state('keep', 'creating', other.pid));
  t.equal(okSetup.exitCode, 0, okSetup.stderr);
  const before = await snapshot(dir);
  const cases: [string, string[], string, RegExp][] = [
    ['malformed JSON', [], '{"id": ', /state on stdin is not valid JSON/],
    ['empty stdin', [], '', /state on stdin \(empty\)/],
    ['missing id', [], JSON.stringify({ ociVersion: '1', status: 'creating', bundle: '/', pid: sb.pid }), /missing required field 'id'/],
    ['bad status', [], state('x', 'exploding', sb.pid), /field 'status': must be one of/],
    ['pid not integer', [], JSON.stringify({ ociVersion: '1', id: 'x', status: 'creating', bundle: '/', pid: 'abc' }), /field 'pid': must be integer/],
    ['missing pid at setup', [], state('x', 'creating'), /'pid' is required for setup/],
    ['dead pid', [], state('x', 'creating', 4194000), /process 4194000 does not exist/],
    ['own netns', [], state('x', 'creating', process.pid), /hook's own network namespace/],
    ['bad publish', ['--publish', '80'], state('x', 'creating', sb.pid), /--publish: '80' is not \[HOSTIP:\]HOSTPORT\[-END\]:CONTAINERPORT/],
    ['port 0', ['--publish', '0:80'], state('x', 'creating', sb.pid), /host port 0 .* outside 1-65535/],
    ['port 70000', ['--publish', '8080:70000/udp'], state('x', 'creating', sb.pid), /container port 70000/],
    ['bad proto', ['--publish', '8080:80/sctp'], state('x', 'creating', sb.pid), /'8080:80\/sctp' is not \[HOSTIP:\]HOSTPORT/],
    ['unequal range', ['--publish', '8000-8002:80-81'], state('x', 'creating', sb.pid), /^ocinet-hook: --publish: '8000-8002:80-81' maps 3 host ports to 2 container ports/],
    ['bad host address', [], state('x', 'creating', sb.pid, { annotations: { 'io.ocinet.publish': 'localhost:8080:80' } }), /annotation io\.ocinet\.publish: host address 'localhost' in 'localhost:8080:80' is not an IPv4 address/],
    ['range twice', ['--publish', '8080-8081:80-81', '--publish', '127.0.0.1:8081:82'], state('x', 'creating', sb.pid), /host port 8081\/tcp is published twice \(and as 127\.0\.0\.1:8081\/tcp\)/],
    ['port twice', ['--publish', '8080:80', '--publish', '8080:81'], state('x', 'creating', sb.pid), /host port 8080\/tcp is published twice/],
    ['port taken', ['--publish', '9000:81'], state('x', 'creating', sb.pid), /already published by container keep/],
    ['annotation port', [], state('x', 'creating', sb.pid, { annotations: { 'io.ocinet.publish': '8080:80,,' } }), /annotation io\.ocinet\.publish/],
    ['bad static ip', ['--ip', '10.213.0.300'], state('x', 'creating', sb.pid), /--ip: '10\.213\.0\.300' is not an IPv4/],
    ['ip outside subnet', [], state('x', 'creating', sb.pid, { annotations: { 'io.ocinet.ip': '10.9.9.9' } }), /outside subnet 10\.213\.0\.0\/24/],
    ['ip is gateway', ['--ip', '10.213.0.1'], state('x', 'creating', sb.pid), /network, gateway or broadcast/],
    ['ip taken', ['--ip', '10.213.0.2'], state('x', 'creating', sb.pid), /already leased to container keep/],
    ['unknown annotation', [], state('x', 'creating', sb.pid, { annotations: { 'io.ocinet.pubish': '1:1' } }), /unknown annotation 'io\.ocinet\.pubish'/],
    ['unknown flag', ['--brige', 'x'], state('x', 'creating', sb.pid), /unknown flag --brige/],
    ['bad subnet', ['--subnet', '10.213.0.1/24'], state('x', 'creating', sb.pid), /host bits set/],
    ['bad bridge name', ['--bridge', '0bad'], state('x', 'creating', sb.pid), /not an interface name/],
    ['bad mtu', ['--mtu', '9x'], state('x', 'creating', sb.pid), /--mtu '9x'/],
    ['subnet changed under a live bridge', ['--subnet', '10.214.0.0/24'], state('x', 'creating', sb.pid), /in use by ocinet with subnet 10\.213\.0\.0\/24/],
    ['id already set up', [], state('keep', 'creating', sb.pid), /already has a network/],
    ['relative state dir', ['--state-dir', 'rel'], state('x', 'creating', sb.pid), /must be an absolute path/],
  ];
  for (const [name, args, input, re] of cases) {
    const r = await hook(['--state-dir', dir, ...SUBNET, ...args], input);
    t.not(r.exitCode, 0, `${name}: exit non-zero`);
    t.match(r.stderr, re, `${name}: says why`);
    t.equal(r.stderr.trim().split('\n').length, 1, `${name}: one line`);
    t.match(r.stderr, /^ocinet-hook: /, `${name}: names the program`);
  }
  t.equal(await snapshot(dir), before, 'nothing changed by any bad input');
  t.equal((await inNs(sb.pid, ['ip', '-o', 'link'])).stdout.split('\n').length, 1, 'sandbox still has only lo');
  await hook(['--state-dir', dir, ...SUBNET], state('keep', 'stopped'));
  await sb.kill();
  await other.kill();
  cleanup(dir);
});

t.test('a refused first container leaves no bridge or rules behind', async (t) => {
  const dir = tempDir('first');
  const sb = await sandbox();
  const before = await snapshot(dir);
  for (const [what, args] of [['static address outside the subnet', ['--ip', '10.9.9.9']], ['static gateway address', ['--ip', '10.213.0.1']]] as const) {
    const r = await hook(['--state-dir', dir, ...SUBNET, ...args], state('first', 'creating', sb.pid));
    t.not(r.exitCode, 0, `${what}: refused`);
    t.equal(await snapshot(dir), before, `${what}: no bridge, rules or lease made`);
  }
  await sb.kill();
  cleanup(dir);
});

t.test('bridge that exists with another address is refused, untouched', async (t) => {
  const dir = tempDir('foreign');
  await sh('ip', ['link', 'add', 'ocforeign', 'type', 'bridge']);
  await sh('ip', ['addr', 'add', '192.0.2.1/24', 'dev', 'ocforeign']);
  const sb = await sandbox();
  const before = await snapshot(dir);
  const r = await hook(['--state-dir', dir, '--bridge', 'ocforeign', ...SUBNET], state('f', 'creating', sb.pid));
  t.not(r.exitCode, 0);
  t.match(r.stderr, /bridge ocforeign exists with address 192\.0\.2\.1\/24, not 10\.213\.0\.1\/24/);
  t.equal(await snapshot(dir), before);
  await sh('ip', ['link', 'del', 'ocforeign']);
  await sb.kill();
  cleanup(dir);
});

t.test('pool exhaustion is a clear error and leaves nothing', async (t) => {
  const dir = tempDir('pool');
  const tiny = ['--state-dir', dir, '--subnet', '10.215.0.0/29', '--bridge', 'ocpool0']; // 5 usable addresses
  const sbs = await Promise.all([...Array(6)].map(() => sandbox()));
  for (let i = 0; i < 5; i++) {
    const r = await hook(tiny, state(`p${i}`, 'creating', sbs[i]!.pid));
    t.equal(r.exitCode, 0, r.stderr);
  }
  const before = await snapshot(dir);
  const r = await hook(tiny, state('p5', 'creating', sbs[5]!.pid));
  t.not(r.exitCode, 0);
  t.match(r.stderr, /no free address left in 10\.215\.0\.0\/29 \(5 addresses, all leased\)/);
  t.equal(await snapshot(dir), before);
  for (let i = 0; i < 5; i++) await hook(tiny, state(`p${i}`, 'stopped'));
  t.same(readDb(dir).containers, {});
  await Promise.all(sbs.map((s) => s.kill()));
  cleanup(dir);
});

t.test('24 concurrent setups get 24 distinct working addresses', async (t) => {
  const dir = tempDir('conc');
  const before = await snapshot(dir);
  const sbs = await Promise.all([...Array(24)].map(() => sandbox()));
  const runs = await Promise.all(sbs.map((s, i) => hook(['--state-dir', dir, ...SUBNET, '--publish', `${7000 + i}:80`], state(`k${i}`, 'creating', s.pid))));
  runs.forEach((r, i) => t.equal(r.exitCode, 0, `setup ${i}: ${r.stderr}`));
  const ips = runs.map((r) => (JSON.parse(r.stdout) as { ip: string }).ip);
  t.equal(new Set(ips).size, 24, 'all distinct');
  const pings = await Promise.all(sbs.map((s, i) => inNs(s.pid, ['busybox', 'ping', '-c1', '-W2', ips[(i + 1) % 24]!], false)));
  t.equal(pings.filter((p) => p.exitCode === 0).length, 24, 'each reaches a neighbour');
  const downs = await Promise.all(sbs.map((_, i) => hook(['--state-dir', dir, ...SUBNET], state(`k${i}`, 'stopped'))));
  downs.forEach((r, i) => t.equal(r.exitCode, 0, `teardown ${i}: ${r.stderr}`));
  t.equal(await snapshot(dir), before, 'all gone');
  await Promise.all(sbs.map((s) => s.kill()));
  cleanup(dir);
});

// On each backend: nftables (auto's pick here) and iptables.
for (const backend of ['nftables', 'iptables']) t.test(`100 setup/teardown cycles leave the namespace as it was (${backend})`, async (t) => {
  const dir = tempDir('leak');
  const before = await snapshot(dir);
  const sb = await sandbox();
  let failures = 0;
  for (let i = 0; i < 100; i++) {
    const args = ['--state-dir', dir, ...SUBNET, '--firewall', backend, '--publish', '8080:80', '--publish', '5353:53/udp'];
    const up = await hook(args, state(`cycle${i}`, 'creating', sb.pid));
    const down = await hook(args, state(`cycle${i}`, 'stopped', 0));
    if (up.exitCode !== 0 || down.exitCode !== 0) failures++;
  }
  t.equal(failures, 0, 'every cycle succeeded');
  t.equal(await snapshot(dir), before);
  t.equal((await inNs(sb.pid, ['ip', '-o', 'link'])).stdout.split('\n').length, 1, 'sandbox back to lo only');
  await sb.kill();
  cleanup(dir);
});

t.test('setup killed with SIGKILL at random points: teardown or gc cleans up, no duplicate address', async (t) => {
  const dir = tempDir('crash');
  const before = await snapshot(dir);
  const resident = await sandbox();
  const args = ['--state-dir', dir, ...SUBNET, '--publish', '8081:80'];
  t.equal((await hook(['--state-dir', dir, ...SUBNET], state('resident', 'creating', resident.pid))).exitCode, 0);
  const withResident = await snapshot();
  for (let i = 0; i < 16; i++) {
    const sb = await sandbox();
    const child = spawn(HOOK, args, { env: {}, stdio: ['pipe', 'ignore', 'ignore'] });
    child.stdin.end(state(`crash${i}`, 'creating', sb.pid));
    await sleep(Math.floor(Math.random() * 90));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('close', r));
    if (i % 2 === 0) {
      const r = await hook(args, state(`crash${i}`, 'stopped'));
      t.equal(r.exitCode, 0, `teardown after crash ${i}: ${r.stderr}`);
    } else {
      await sb.kill(); // the container died with it: only gc can know
      const g = await cli(['gc', '--state-dir', dir]);
      t.equal(g.exitCode, 0, `gc after crash ${i}: ${g.stderr}`);
    }
    await sb.kill();
    const db = readDb(dir);
    const ips = Object.values(db.containers).map((c) => c.ip);
    t.equal(new Set(ips).size, ips.length, 'no address handed out twice');
    t.same(Object.keys(db.containers), ['resident'], `crash ${i}: only the resident is left`);
  }
  t.equal(await snapshot(), withResident, 'links and rules as with the resident alone');
  await hook(['--state-dir', dir, ...SUBNET], state('resident', 'stopped'));
  await resident.kill();
  t.equal(await snapshot(dir), before);
  cleanup(dir);
});

t.test('namespace sharing: second container shares eth0, its teardown leaves it', async (t) => {
  const dir = tempDir('share');
  const sb = await sandbox();
  const a = await hook(['--state-dir', dir, ...SUBNET], state('owner', 'creating', sb.pid));
  t.equal(a.exitCode, 0, a.stderr);
  // A second container joined via "path": "/proc/PID/ns/net": its init lives in the same netns.
  const joiner = spawn('nsenter', [`--net=/proc/${sb.pid}/ns/net`, '--', 'sleep', '3600'], { stdio: 'ignore' });
  await sleep(100);
  const own = await hook(['--state-dir', dir, ...SUBNET], state('joiner', 'creating', joiner.pid!, { annotations: { 'io.ocinet.publish': '9090:81' } }));
  t.not(own.exitCode, 0, 'a joiner cannot publish ports of its own');
  t.match(own.stderr, /joins the network namespace of owner: publish its ports on owner/);
  const b = await hook(['--state-dir', dir, ...SUBNET, '--publish', '9091:80'], state('joiner', 'creating', joiner.pid!));
  t.equal(b.exitCode, 0, b.stderr);
  const res = JSON.parse(b.stdout) as { ip: string; sharedWith: string };
  t.equal(res.sharedWith, 'owner');
  t.equal(res.ip, (JSON.parse(a.stdout) as { ip: string }).ip, 'same address');
  const links = (await inNs(sb.pid, ['ip', '-o', 'link'])).stdout;
  t.equal(links.split('\n').length, 2, 'still one eth0 and lo');
  const list = JSON.parse((await cli(['list', '--json', '--state-dir', dir])).stdout) as { id: string; sharedWith?: string }[];
  t.same(list.map((c) => c.id).sort(), ['joiner', 'owner']);
  const d = await hook(['--state-dir', dir, ...SUBNET], state('joiner', 'stopped'));
  t.equal(d.exitCode, 0, d.stderr);
  t.equal((await inNs(sb.pid, ['busybox', 'ping', '-c1', '-W2', '10.213.0.1'], false)).exitCode, 0, 'owner network intact');
  await hook(['--state-dir', dir, ...SUBNET], state('owner', 'stopped'));
  t.same(readDb(dir).containers, {});
  joiner.kill('SIGKILL');
  await sb.kill();
  cleanup(dir);
});

t.test('the owner leaving first hands the network to a live sharer', async (t) => {
  const dir = tempDir('heir');
  const sb = await sandbox();
  t.equal((await hook(['--state-dir', dir, ...SUBNET, '--publish', '8082:80'], state('first', 'creating', sb.pid))).exitCode, 0);
  const joiner = spawn('nsenter', [`--net=/proc/${sb.pid}/ns/net`, '--', 'sleep', '3600'], { stdio: 'ignore' });
  await sleep(100);
  t.equal((await hook(['--state-dir', dir, ...SUBNET], state('second', 'creating', joiner.pid!))).exitCode, 0);
  await sb.kill(); // the first container's init exits; the namespace lives on in the joiner
  t.equal((await hook(['--state-dir', dir, ...SUBNET], state('first', 'stopped'))).exitCode, 0);
  t.equal((await inNs(joiner.pid!, ['busybox', 'ping', '-c1', '-W2', '10.213.0.1'], false)).exitCode, 0, 'sharer keeps the network');
  t.same(Object.keys(readDb(dir).containers), ['second']);
  t.equal((await hook(['--state-dir', dir, ...SUBNET], state('second', 'stopped'))).exitCode, 0);
  t.equal((await sh('iptables-save', ['-t', 'nat'])).stdout.includes('OCINET'), false, 'rules gone with the last one');
  joiner.kill('SIGKILL');
  cleanup(dir);
});

t.test('gc removes networks of dead sandboxes and orphans; list shows state', async (t) => {
  const dir = tempDir('gc');
  const before = await snapshot(dir);
  const live = await sandbox();
  const dead = await sandbox();
  t.equal((await hook(['--state-dir', dir, ...SUBNET], state('live', 'creating', live.pid))).exitCode, 0);
  t.equal((await hook(['--state-dir', dir, ...SUBNET, '--publish', '8090:80'], state('dead', 'creating', dead.pid))).exitCode, 0);
  await dead.kill();
  await sh('ip', ['link', 'add', 'ocv0123456789', 'type', 'veth', 'peer', 'name', 'ocjunk0']);
  // On this state dir's bridge: provably its own (gc leaves other `ocv…` links be).
  await sh('ip', ['link', 'set', 'ocv0123456789', 'master', 'ocinet0']);
  writeFileSync(`${dir}/state.json.4194001.tmp`, '{');
  const table = (await cli(['list', '--state-dir', dir])).stdout;
  t.match(table, /live\s+10\.213\.0\.\d+\/24\s+ocinet0\s+-\s+\d+\s+running/);
  t.match(table, /dead\s+10\.213\.0\.\d+\/24\s+ocinet0\s+8090:80\/tcp\s+\d+\s+gone/);
  const g = await cli(['gc', '--json', '--state-dir', dir]);
  t.equal(g.exitCode, 0, g.stderr);
  const rep = JSON.parse(g.stdout) as { containers: string[]; links: string[]; tempFiles: string[] };
  t.same(rep.containers, ['dead']);
  t.same(rep.links, ['ocv0123456789']);
  t.same(rep.tempFiles, ['state.json.4194001.tmp']);
  t.same(Object.keys(readDb(dir).containers), ['live']);
  t.equal((await inNs(live.pid, ['busybox', 'ping', '-c1', '-W2', '10.213.0.1'], false)).exitCode, 0, 'live container untouched');
  await live.kill();
  const g2 = await cli(['gc', '--json', '--state-dir', dir]);
  t.same((JSON.parse(g2.stdout) as { containers: string[] }).containers, ['live'], 'the last one leaving takes the bridge');
  t.equal(await snapshot(dir), before);
  cleanup(dir);
});

t.test('CLI basics', async (t) => {
  t.match((await cli(['--version'])).stdout, /^ocinet \d+\.\d+\.\d+/);
  const bad = await cli(['frobnicate']);
  t.equal(bad.exitCode, 1);
  t.match(bad.stderr, /^ocinet: unknown command 'frobnicate'/);
  const doc = await cli(['doctor', '--state-dir', tempDir('doc')]);
  t.equal(doc.exitCode, 0, doc.stdout);
  t.match(doc.stdout, /ok\s+kernel: bridge: works/);
  t.match((await sh(HOOK, ['--version'])).stdout, /^ocinet-hook \d/);
  t.ok(CLI);
});
