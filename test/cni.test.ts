// Issue 12: ocinet-cni alone, driven with the CNI spec's environment as a
// runtime drives it: ADD, CHECK, DEL, GC, STATUS and VERSION on namespaces
// bound to files (as podman and CRI runtimes make them) and on
// /proc/PID/ns/net (as ctr does), one state and IPAM with the hook, chaining
// with Debian's tuning plugin, and bad configurations and environments that
// must get the spec's error JSON and change nothing.
import t, { type Test } from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { tableName } from '../core/firewall/nftables/backend.js';
import { stateId } from '../core/state/names.js';
import { boundNetns, cni, DEBIAN_CNI, type CniRun } from './lib/cni.js';
import { cleanup, cli, hook, httpGet, readDb, sandbox, sh, snapshot, state, tempDir } from './lib/env.js';

const work = tempDir('cni');
const STATE = join(work, 'state');
const baseline = await snapshot();
t.teardown(() => cleanup(work));

let nsCount = 0;
const netns = async (): Promise<{ path: string; drop: () => Promise<void> }> => boundNetns(join(work, `ns${++nsCount}`));

const conf = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  cniVersion: '1.1.0', name: 'ocnet', type: 'ocinet', bridge: 'occni0', subnet: '10.240.0.0/24', stateDir: STATE,
  capabilities: { portMappings: true }, ...extra,
});
const inside = (path: string, args: string[], reject = true): ReturnType<typeof sh> => sh('nsenter', [`--net=${path}`, '--', ...args], { reject });
const ok = (t: Test, r: { exitCode: number; stdout: string; stderr: string }, what: string): void => void t.equal(r.exitCode, 0, `${what}: ${r.stdout} ${r.stderr}`);

interface Result {
  cniVersion: string;
  interfaces: { name: string; mac?: string; sandbox?: string }[];
  ips: { address: string; gateway?: string; interface?: number; version?: string }[];
  routes: { dst: string; gw?: string }[];
}

t.test('VERSION lists the versions, in the one asked when it is ours', async (t) => {
  let r = await cni({ command: 'VERSION' }, { cniVersion: '1.0.0' });
  ok(t, r, 'VERSION');
  t.same(r.json, { cniVersion: '1.0.0', supportedVersions: ['0.4.0', '1.0.0', '1.1.0'] });
  r = await cni({ command: 'VERSION' }, '');
  t.same(r.json?.supportedVersions, ['0.4.0', '1.0.0', '1.1.0'], 'answers without a configuration too');
});

t.test('ADD, a repeated ADD, CHECK, published port, DEL twice: nothing left', async (t) => {
  const a = await netns();
  const b = await netns();
  const www = join(work, 'www');
  mkdirSync(www, { recursive: true });
  writeFileSync(join(www, 'index.html'), 'from a\n');
  const withPort = conf({ runtimeConfig: { portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp', hostIP: '' }] } });

  const add = await cni({ command: 'ADD', containerId: 'ca', netns: a.path }, withPort);
  ok(t, add, 'ADD a');
  const res = add.json as unknown as Result;
  t.equal(res.cniVersion, '1.1.0');
  t.equal(res.interfaces.length, 3, 'bridge, host veth, container interface');
  t.equal(res.interfaces[0]!.name, 'occni0');
  t.match(res.interfaces[1]!.name, /^ocv[0-9a-f]{10}$/);
  t.same({ name: res.interfaces[2]!.name, sandbox: res.interfaces[2]!.sandbox }, { name: 'eth0', sandbox: a.path });
  t.equal(res.ips.length, 1);
  t.same(res.ips[0], { address: '10.240.0.2/24', gateway: '10.240.0.1', interface: 2 });
  t.same(res.routes, [{ dst: '0.0.0.0/0', gw: '10.240.0.1' }]);
  const link = (await inside(a.path, ['ip', '-o', 'link', 'show', 'eth0'])).stdout;
  t.ok(link.includes(`link/ether ${res.interfaces[2]!.mac}`), 'the result holds the container MAC');
  t.ok((await sh('ip', ['-o', 'link', 'show', res.interfaces[1]!.name])).stdout.includes(`link/ether ${res.interfaces[1]!.mac}`), 'and the host veth MAC');

  const again = await cni({ command: 'ADD', containerId: 'ca', netns: a.path }, withPort);
  ok(t, again, 'the same ADD again');
  t.same(again.json, add.json, 'the same result, no second address');
  t.equal(Object.keys(readDb(STATE).containers).length, 1);

  const addB = await cni({ command: 'ADD', containerId: 'cb', netns: b.path }, conf());
  ok(t, addB, 'ADD b');
  t.equal((addB.json as unknown as Result).ips[0]!.address, '10.240.0.3/24');
  await inside(a.path, ['busybox', 'ping', '-c1', '-W2', '10.240.0.1']);
  t.pass('a reaches its gateway');
  await inside(b.path, ['busybox', 'ping', '-c1', '-W2', '10.240.0.2']);
  t.pass('b reaches a');
  const httpd = spawn('nsenter', [`--net=${a.path}`, '--', 'busybox', 'httpd', '-f', '-p', '80', '-h', www], { stdio: 'ignore' });
  t.teardown(() => void httpd.kill('SIGKILL'));
  t.equal(await httpGet('http://127.0.0.1:8080/'), 'from a', 'the port mapping answers on 127.0.0.1');

  const elsewhere = await netns();
  const twice = await cni({ command: 'ADD', containerId: 'ca', netns: elsewhere.path }, withPort);
  t.equal(twice.json?.code, 100, `the same attachment in another namespace is refused: ${twice.stdout}`);
  t.equal((await inside(elsewhere.path, ['ip', '-o', 'link', 'show', 'eth0'], false)).exitCode, 1, 'and nothing was made there');

  const check = await cni({ command: 'CHECK', containerId: 'ca', netns: a.path }, { ...withPort, prevResult: add.json });
  ok(t, check, 'CHECK right after ADD');
  t.equal(check.stdout, '');

  const list = await cli(['list', '--json', '--state-dir', STATE]);
  const rows = JSON.parse(list.stdout) as { id: string; netns?: string; cni?: { network: string }; alive: boolean }[];
  t.same(rows.map((r) => [r.id, r.netns, r.cni?.network, r.alive]).sort(), [['ca/eth0', a.path, 'ocnet', true], ['cb/eth0', b.path, 'ocnet', true]], 'ocinet list shows the attachments');

  for (const [id, ns] of [['ca', a], ['cb', b]] as const) {
    ok(t, await cni({ command: 'DEL', containerId: id, netns: ns.path }, { ...conf(), prevResult: add.json }), `DEL ${id}`);
    ok(t, await cni({ command: 'DEL', containerId: id, netns: ns.path }, conf()), `DEL ${id} again`);
  }
  await elsewhere.drop();
  await a.drop();
  ok(t, await cni({ command: 'DEL', containerId: 'ca', netns: a.path }, conf()), 'DEL once its namespace is gone');
  ok(t, await cni({ command: 'DEL', containerId: 'ca' }, conf()), 'DEL without CNI_NETNS');
  await b.drop();
  t.equal(await snapshot(STATE), baseline, 'nothing left');
});

t.test('one state and IPAM with the hook; /proc/PID/ns/net; reclaim of a vanished namespace', async (t) => {
  const sb = await sandbox();
  const other = await sandbox();
  t.teardown(async () => {
    await sb.kill();
    await other.kill();
  });
  const NET = ['--state-dir', STATE, '--bridge', 'occni0', '--subnet', '10.240.0.0/24'];
  const h = await hook(NET, state('hooked', 'creating', sb.pid));
  t.equal(h.exitCode, 0, h.stderr);
  const a = await netns();
  const add = await cni({ command: 'ADD', containerId: 'mixed', netns: a.path }, conf());
  ok(t, add, 'ADD beside a hook container');
  t.equal((add.json as unknown as Result).ips[0]!.address, '10.240.0.3/24', 'the hook has .2: never one address twice');
  const byPid = await cni({ command: 'ADD', containerId: 'bypid', netns: `/proc/${other.pid}/ns/net` }, conf());
  ok(t, byPid, 'ADD by /proc/PID/ns/net');
  t.equal((byPid.json as unknown as Result).ips[0]!.address, '10.240.0.4/24');
  t.equal(readDb(STATE).containers['bypid/eth0'] !== undefined, true);

  // The runtime lost the namespace without a DEL: the record is dead, and the next setup needing the address reclaims it.
  await a.drop();
  const sb2 = await sandbox();
  t.teardown(() => sb2.kill());
  const takes = await hook([...NET, '--ip', '10.240.0.3'], state('takes', 'creating', sb2.pid));
  t.equal(takes.exitCode, 0, `the dead attachment's address is reclaimed: ${takes.stderr}`);
  t.notOk(readDb(STATE).containers['mixed/eth0'], 'its record went');

  // The hook's teardown never takes an attachment, nor a DEL a hook container.
  ok(t, await cni({ command: 'DEL', containerId: 'hooked', ifname: 'eth0' }, conf()), 'DEL of an id only the hook has');
  t.ok(readDb(STATE).containers.hooked, 'the hook container is untouched');
  ok(t, await cni({ command: 'DEL', containerId: 'bypid', netns: `/proc/${other.pid}/ns/net` }, { ...conf(), name: 'othernet' }), 'DEL from another network name');
  t.ok(readDb(STATE).containers['bypid/eth0'], "another network's DEL leaves the attachment");

  await other.kill();
  ok(t, await cni({ command: 'DEL', containerId: 'bypid' }, conf()), 'DEL after the process died');
  for (const id of ['hooked', 'takes']) t.equal((await hook(NET, state(id, 'stopped'))).exitCode, 0);
  t.equal(await snapshot(STATE), baseline, 'nothing left');
});

t.test('CHECK says what is wrong', async (t) => {
  const a = await netns();
  t.teardown(() => a.drop());
  const c = conf({ firewall: 'nftables', runtimeConfig: { portMappings: [{ hostPort: 8081, containerPort: 80 }] } });
  const add = await cni({ command: 'ADD', containerId: 'chk', netns: a.path }, c);
  ok(t, add, 'ADD');
  const check = (): Promise<CniRun> => cni({ command: 'CHECK', containerId: 'chk', netns: a.path }, { ...c, prevResult: add.json });
  ok(t, await check(), 'CHECK');
  const noPrev = await cni({ command: 'CHECK', containerId: 'chk', netns: a.path }, c);
  t.equal(noPrev.json?.code, 7);
  t.match(noPrev.json?.msg, /prevResult/);
  const unknown = await cni({ command: 'CHECK', containerId: 'nobody', netns: a.path }, { ...c, prevResult: add.json });
  t.equal(unknown.json?.code, 3, 'an attachment ocinet does not have: unknown container');

  await inside(a.path, ['ip', 'addr', 'del', '10.240.0.2/24', 'dev', 'eth0']);
  let r = await check();
  t.equal(r.json?.code, 110);
  t.match(r.json?.msg, /eth0 lacks address 10\.240\.0\.2\/24/);
  t.match(r.json?.msg, /no default route via 10\.240\.0\.1 on eth0/, 'the route went with the address');
  await inside(a.path, ['ip', 'addr', 'add', '10.240.0.2/24', 'dev', 'eth0']);
  await inside(a.path, ['ip', 'route', 'add', 'default', 'via', '10.240.0.1']);
  ok(t, await check(), 'CHECK once repaired');

  await sh('nft', ['flush', 'set', 'inet', tableName(stateId(STATE)), 'pub']);
  r = await check();
  t.match(r.json?.msg, /its own rules are missing: nftables element pub tcp \. 8081/, 'a published port flushed away');
  ok(t, await cli(['reload', '--state-dir', STATE]), 'ocinet reload');
  ok(t, await check(), 'CHECK after reload');
  await sh('ip', ['link', 'set', (add.json as unknown as Result).interfaces[1]!.name, 'nomaster']);
  r = await check();
  t.match(r.json?.msg, /is not on bridge occni0/);
  ok(t, await cni({ command: 'DEL', containerId: 'chk', netns: a.path }, c), 'DEL');
});

t.test('GC removes what the runtime no longer lists, alive or not, and only this network', async (t) => {
  const nss = await Promise.all([netns(), netns(), netns()]);
  t.teardown(async () => {
    for (const n of nss) await n.drop();
  });
  const sb = await sandbox();
  t.teardown(() => sb.kill());
  for (const [i, id] of ['keep', 'stale', 'vanished'].entries()) ok(t, await cni({ command: 'ADD', containerId: id, netns: nss[i]!.path }, conf()), `ADD ${id}`);
  ok(t, await cni({ command: 'ADD', containerId: 'keep', ifname: 'net1', netns: nss[0]!.path }, { ...conf(), name: 'second', bridge: 'occni1', subnet: '10.241.0.0/24' }), 'ADD a second network in the same namespace');
  t.equal((await hook(['--state-dir', STATE, '--bridge', 'occni0', '--subnet', '10.240.0.0/24'], state('hookc', 'creating', sb.pid))).exitCode, 0);
  await nss[2]!.drop();

  const old = await cni({ command: 'GC' }, { ...conf(), cniVersion: '1.0.0', 'cni.dev/valid-attachments': [] });
  t.equal(old.json?.code, 1, 'GC needs 1.1.0');
  const gc = await cni({ command: 'GC' }, { ...conf(), 'cni.dev/valid-attachments': [{ containerID: 'keep', ifname: 'eth0' }] });
  ok(t, gc, 'GC');
  t.equal(gc.stdout, '', 'GC prints nothing on success');
  t.same(Object.keys(readDb(STATE).containers).sort(), ['hookc', 'keep/eth0', 'keep/net1'], 'the stale and the vanished went; the hook container and the other network stayed');
  t.equal((await inside(nss[1]!.path, ['ip', '-o', 'link', 'show', 'eth0'], false)).exitCode, 1, "the live stale attachment's eth0 is gone");
  await inside(nss[0]!.path, ['busybox', 'ping', '-c1', '-W2', '10.240.0.1']);
  t.pass('the kept one still works');

  ok(t, await cni({ command: 'GC' }, { ...conf(), name: 'second', bridge: 'occni1', subnet: '10.241.0.0/24', 'cni.dev/valid-attachments': [] }), 'GC of the second network with nothing valid');
  t.notOk((await sh('ip', ['link', 'show', 'occni1'], { reject: false })).exitCode === 0, 'its bridge went with its last attachment');
  ok(t, await cni({ command: 'DEL', containerId: 'keep', netns: nss[0]!.path }, conf()), 'DEL keep');
  t.equal((await hook(['--state-dir', STATE, '--bridge', 'occni0', '--subnet', '10.240.0.0/24'], state('hookc', 'stopped'))).exitCode, 0);
  t.equal(await snapshot(STATE), baseline, 'nothing left');
});

t.test('STATUS: ready, unusable state dir (50), rules gone under live containers (51)', async (t) => {
  ok(t, await cni({ command: 'STATUS' }, conf()), 'STATUS');
  const old = await cni({ command: 'STATUS' }, { ...conf(), cniVersion: '1.0.0' });
  t.equal(old.json?.code, 1, 'STATUS needs 1.1.0');
  const open = join(work, 'open-state');
  mkdirSync(open);
  chmodSync(open, 0o777);
  const bad = await cni({ command: 'STATUS' }, { ...conf(), stateDir: open });
  t.equal(bad.json?.code, 50, `a state dir others may write: not available: ${bad.stdout}`);
  t.match(bad.json?.msg, /state directory/);
  const addThere = await cni({ command: 'ADD', containerId: 'x', netns: '/proc/self/ns/net' }, { ...conf(), stateDir: open });
  t.equal(addThere.json?.code, 7, 'ADD with it: refused as configuration, before anything');

  const a = await netns();
  t.teardown(() => a.drop());
  const c = conf({ firewall: 'iptables', bridge: 'occni2', subnet: '10.242.0.0/24' });
  ok(t, await cni({ command: 'ADD', containerId: 'st', netns: a.path }, c), 'ADD');
  ok(t, await cni({ command: 'STATUS' }, c), 'STATUS with a live attachment');
  await sh('iptables', ['-t', 'nat', '-F', 'OCINET-POSTROUTING']);
  const cut = await cni({ command: 'STATUS' }, c);
  t.equal(cut.json?.code, 51, `rules flushed under a live attachment: ${cut.stdout}`);
  t.match(cut.json?.msg, /ocinet reload/);
  ok(t, await cli(['reload', '--state-dir', STATE]), 'reload');
  ok(t, await cni({ command: 'STATUS' }, c), 'STATUS after reload');
  ok(t, await cni({ command: 'DEL', containerId: 'st', netns: a.path }, c), 'DEL');
});

t.test('chaining: Debian tuning after ocinet gets a valid prevResult', async (t) => {
  const a = await netns();
  t.teardown(() => a.drop());
  const c = conf({ cniVersion: '1.0.0' });
  const add = await cni({ command: 'ADD', containerId: 'chain', netns: a.path }, c);
  ok(t, add, 'ocinet ADD (1.0.0)');
  const tuningConf = { cniVersion: '1.0.0', name: 'ocnet', type: 'tuning', sysctl: { 'net.ipv4.conf.eth0.arp_notify': '1' }, prevResult: add.json };
  const tuned = await cni({ command: 'ADD', containerId: 'chain', netns: a.path }, tuningConf, join(DEBIAN_CNI, 'tuning'));
  t.equal(tuned.exitCode, 0, `tuning ADD: ${tuned.stdout}`);
  t.same((tuned.json as unknown as Result).ips, (add.json as unknown as Result).ips, 'tuning hands the addresses on');
  t.equal((await inside(a.path, ['cat', '/proc/sys/net/ipv4/conf/eth0/arp_notify'])).stdout, '1', "tuning's sysctl landed on ocinet's eth0");
  ok(t, await cni({ command: 'CHECK', containerId: 'chain', netns: a.path }, { ...c, prevResult: tuned.json }), 'ocinet CHECK with the chain\'s result');
  t.equal((await cni({ command: 'DEL', containerId: 'chain', netns: a.path }, { ...tuningConf, prevResult: tuned.json }, join(DEBIAN_CNI, 'tuning'))).exitCode, 0, 'tuning DEL');
  ok(t, await cni({ command: 'DEL', containerId: 'chain', netns: a.path }, { ...c, prevResult: tuned.json }), 'ocinet DEL');

  const v04 = await cni({ command: 'ADD', containerId: 'old', netns: a.path }, conf({ cniVersion: '0.4.0' }));
  ok(t, v04, 'ADD in 0.4.0');
  t.equal((v04.json as unknown as Result).ips[0]!.version, '4', '0.4.0 results carry the IP version');
  ok(t, await cni({ command: 'DEL', containerId: 'old', netns: a.path }, conf({ cniVersion: '0.4.0' })), 'DEL');
  t.equal(await snapshot(STATE), baseline, 'nothing left');
});

t.test('bad environments and configurations: the spec error JSON, naming the field; nothing changes', async (t) => {
  const a = await netns();
  t.teardown(() => a.drop());
  const plain = join(work, 'plainfile');
  writeFileSync(plain, '');
  const before = await snapshot(STATE);
  const base = { command: 'ADD', containerId: 'bad', netns: a.path };
  const cases: [string, Partial<typeof base> & { args?: string; ifname?: string; env?: Record<string, string> }, unknown, number, RegExp][] = [
    ['no CNI_COMMAND', { env: { PATH: '/usr/bin' } }, conf(), 4, /CNI_COMMAND is not set/],
    ['unknown command', { command: 'FROB' }, conf(), 4, /CNI_COMMAND 'FROB'/],
    ['ADD without CNI_NETNS', { netns: undefined as unknown as string }, conf(), 4, /CNI_NETNS is required/],
    ['empty container id', { containerId: '' }, conf(), 4, /CNI_CONTAINERID/],
    ['container id with a slash', { containerId: 'a/b' }, conf(), 4, /CNI_CONTAINERID/],
    ['interface name with a space', { ifname: 'eth 0' }, conf(), 4, /CNI_IFNAME/],
    ['interface name too long', { ifname: 'e'.repeat(16) }, conf(), 4, /CNI_IFNAME/],
    ['relative CNI_NETNS', { netns: 'ns1' }, conf(), 4, /CNI_NETNS/],
    ['CNI_NETNS a plain file', { netns: plain }, conf(), 4, /not a network namespace/],
    ["CNI_NETNS the plugin's own", { netns: '/proc/self/ns/net' }, conf(), 4, /own network namespace/],
    ['CNI_NETNS missing', { netns: join(work, 'nope') }, conf(), 3, /cannot be opened/],
    ['CNI_ARGS not pairs', { args: 'IP' }, conf(), 4, /CNI_ARGS: 'IP' is not KEY=VALUE/],
    ['CNI_ARGS unknown key', { args: 'COLOR=red' }, conf(), 4, /unknown key 'COLOR'/],
    ['CNI_ARGS bad IP', { args: 'IgnoreUnknown=1;IP=10.240.0.300' }, conf(), 4, /IP '10\.240\.0\.300'/],
    ['empty stdin', {}, '', 6, /empty/],
    ['stdin not JSON', {}, '{"cniVersion":', 6, /not JSON/],
    ['old version', {}, conf({ cniVersion: '0.3.1' }), 1, /0\.3\.1 is not supported/],
    ['missing name', {}, { cniVersion: '1.1.0', type: 'ocinet' }, 7, /missing required field 'name'/],
    ['wrong type', {}, conf({ type: 'bridge' }), 7, /field 'type'/],
    ['mtu too small', {}, conf({ mtu: 10 }), 7, /field 'mtu'/],
    ['bad subnet', {}, conf({ subnet: '10.240.0.0/33' }), 7, /field 'subnet'/],
    ['typo field', {}, conf({ subent: '10.0.0.0/24' }), 7, /unknown field 'subent'/],
    ['an ipam section', {}, conf({ ipam: { type: 'host-local' } }), 7, /field 'ipam'/],
    ['ipMasq false', {}, conf({ ipMasq: false }), 7, /field 'ipMasq'/],
    ['bad bridge name', {}, conf({ bridge: 'no spaces' }), 7, /field 'bridge'/],
    ['bad firewall', {}, conf({ firewall: 'pf' }), 7, /field 'firewall'/],
    ['relative state dir', {}, conf({ stateDir: 'state' }), 7, /field 'stateDir'/],
    ['subnet6 on iptables', {}, conf({ firewall: 'iptables', subnet6: 'fd00:1::/64' }), 7, /field 'subnet6'/],
    ['privileged host port', {}, conf({ runtimeConfig: { portMappings: [{ hostPort: 80, containerPort: 80 }] } }), 7, /portMappings\[0\].*outside the configuration's publishRange/],
    ['sctp mapping', {}, conf({ runtimeConfig: { portMappings: [{ hostPort: 8082, containerPort: 80, protocol: 'sctp' }] } }), 7, /portMappings\[0\].protocol/],
    ['IPv6 host address', {}, conf({ runtimeConfig: { portMappings: [{ hostPort: 8082, containerPort: 80, hostIP: '::1' }] } }), 7, /hostIP '::1'/],
    ['bad runtime ips', {}, conf({ runtimeConfig: { ips: ['banana'] } }), 7, /runtimeConfig\.ips\[0\]/],
    ['static address outside the subnet', { args: 'IP=10.9.9.9' }, conf(), 7, /10\.9\.9\.9/],
  ];
  for (const [what, call, cfg, code, msg] of cases) {
    const r = await cni({ ...base, ...call } as Parameters<typeof cni>[0], cfg);
    t.not(r.exitCode, 0, `${what}: exits non-zero`);
    t.equal(r.json?.code, code, `${what}: code ${code} (${r.stdout.trim()})`);
    t.match(String(r.json?.msg ?? ''), msg, `${what}: says what is wrong`);
    t.equal(typeof r.json?.cniVersion, 'string', `${what}: the spec's error form`);
  }
  t.equal(await snapshot(STATE), before, 'no refusal changed anything');

  // A port another attachment holds: refused whole.
  const b = await netns();
  t.teardown(() => b.drop());
  const holds = conf({ runtimeConfig: { portMappings: [{ hostPort: 8090, containerPort: 80 }] } });
  ok(t, await cni({ command: 'ADD', containerId: 'holder', netns: b.path }, holds), 'ADD holder of 8090');
  const taken = await snapshot(STATE);
  const clash = await cni({ command: 'ADD', containerId: 'clash', netns: a.path }, holds);
  t.equal(clash.json?.code, 100, `a taken host port: ${clash.stdout}`);
  t.equal(await snapshot(STATE), taken, 'the refused ADD changed nothing');
  ok(t, await cni({ command: 'DEL', containerId: 'holder', netns: b.path }, holds), 'DEL holder');
  t.equal(await snapshot(STATE), baseline, 'nothing left');
});
