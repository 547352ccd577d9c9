// The VM core (core/vm.ts, core/tap.ts) against a real QEMU guest (TCG):
// hot-plug a TAP NIC on a bridge and configure it in the guest, routes,
// multi-queue, reusing an existing TAP, unplug; and the failure cases (QMP
// socket missing, silent agent, device_add refused on q35, NIC never seen,
// QEMU killed mid-operation), each with a clear error and nothing left behind.
import t from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { isOcinetError } from '../core/base/errors.js';
import type { IfaceInput } from '../core/input/iface.js';
import { QgaClient } from '../core/vm/qga.js';
import { QmpClient } from '../core/vm/qmp.js';
import { ensureTap } from '../core/net/tap.js';
import { deleteLink } from '../core/net/bridge.js';
import { guestIpBatch, guestLinks, guestRoutes, vmAddIface, vmAlive, vmDelIface, type VmSockets } from '../core/vm/hotplug.js';
import { ROOT, sleep, tempDir } from './lib/env.js';
import { fakeAgent as agentOn, reply, type FakeAgent } from './lib/fake-agent.js';

const DIR = tempDir('vm');
const GUEST: VmSockets = { qmp: join(DIR, 'guest/qmp.sock'), qga: join(DIR, 'guest/qga.sock') };
const BRIDGE = 'ocvmbr0';
const pids: number[] = [];

const EXAMPLE: IfaceInput = {
  device: 'tap-test',
  name: 'eth-test',
  IPAddresses: [{ address: '172.16.0.3', mask: '16' }],
  hwAddr: '02:42:20:6f:a3:69',
  mtu: 1500,
};

function ip(args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8' });
}

function hostHas(link: string): boolean {
  return spawnSync('ip', ['link', 'show', 'dev', link], { stdio: 'ignore' }).status === 0;
}

function kill(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* gone */
  }
}

async function errorOf(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a rejection');
}

/** A bare QEMU, paused, QMP only: enough for hot-plug on `pc`, and q35's refusal. */
async function bareQemu(name: string, machine: 'pc' | 'q35'): Promise<{ vmQmp: string; pid: number }> {
  const d = join(DIR, name);
  execFileSync('mkdir', ['-p', d]);
  const sock = join(d, 'qmp.sock');
  execFileSync('qemu-system-x86_64', [
    '-machine', machine, '-accel', 'tcg', '-nodefaults', '-display', 'none', '-S', '-daemonize',
    '-qmp', `unix:${sock},server=on,wait=off`, '-pidfile', join(d, 'qemu.pid'),
  ]);
  const pid = Number(readFileSync(join(d, 'qemu.pid'), 'utf8').trim());
  pids.push(pid);
  for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(20);
  return { vmQmp: sock, pid };
}

/**
 * A stand-in guest agent: 'silent' accepts and never answers; 'empty'
 * answers guest-sync and reports no network interfaces, ever.
 */
function fakeAgent(path: string, mode: 'silent' | 'empty'): FakeAgent {
  return agentOn(path, (c, msg) => {
    if (mode === 'silent') return;
    if (msg.execute === 'guest-sync') reply(c, { return: msg.arguments?.id });
    else reply(c, { return: msg.execute === 'guest-network-get-interfaces' ? [] : {}, id: msg.id });
  });
}

async function qmpDo<T>(sock: string, command: string, args?: Record<string, unknown>): Promise<T> {
  const qmp = await QmpClient.connect(sock, { timeoutMs: 5000 });
  try {
    return await qmp.execute<T>(command, args);
  } finally {
    qmp.close();
  }
}

const infoNetwork = (sock: string): Promise<string> => qmpDo<string>(sock, 'human-monitor-command', { 'command-line': 'info network' });

async function guestExec(path: string, args: string[]): Promise<{ exitcode: number; stdout: string; stderr: string }> {
  const qga = await QgaClient.connect(GUEST.qga, { timeoutMs: 5000 });
  try {
    return await qga.exec(path, args, { timeoutMs: 20_000 });
  } finally {
    qga.close();
  }
}

t.teardown(() => {
  for (const pid of pids) kill(pid);
  rmSync(DIR, { recursive: true, force: true });
});

t.test('build and boot the guest; bridge on the host', async (t) => {
  // `make test` builds the guest outside the namespace (it downloads with apt); here it is a cache check.
  const b = spawnSync('bash', [join(ROOT, 'build/guest/build-guest.sh')], { stdio: ['ignore', 'inherit', 'pipe'], timeout: 900_000 });
  t.equal(b.status, 0, `build-guest.sh: ${b.stderr?.toString()}`);
  const start = Date.now();
  const r = spawnSync('bash', [join(ROOT, 'build/guest/boot-guest.sh'), join(DIR, 'guest')], { stdio: ['ignore', 'inherit', 'pipe'], timeout: 120_000 });
  t.equal(r.status, 0, `boot-guest.sh: ${r.stderr?.toString()}`);
  pids.push(Number(readFileSync(join(DIR, 'guest/qemu.pid'), 'utf8').trim()));
  t.comment(`guest boot: ${Date.now() - start} ms`);
  ip(['link', 'add', BRIDGE, 'type', 'bridge']);
  ip(['addr', 'add', '172.16.0.1/16', 'dev', BRIDGE]);
  ip(['link', 'set', BRIDGE, 'up']);
  t.equal(await vmAlive(GUEST), true, 'vmAlive: the guest QEMU answers');
  t.equal(await vmAlive({ qmp: join(DIR, 'nope.sock'), qga: '' }), false, 'vmAlive: no socket, false');
});

t.test('add the documented interface, ping, routes, unplug', async (t) => {
  let start = Date.now();
  const a = await vmAddIface(GUEST, EXAMPLE, { bridge: BRIDGE });
  t.comment(`vmAddIface (hot-plug + guest config): ${Date.now() - start} ms`);
  t.match(a, { device: 'tap-test', name: 'eth-test', hwAddr: '02:42:20:6f:a3:69', mtu: 1500, address: '172.16.0.3', prefix: 16, kind: 'tap', linkType: 'tap', createdTap: true });
  t.match(a.pciAddr, /^[0-9a-f]{2}(\/[0-9a-f]{2})*$/, `pciAddr ${a.pciAddr} in kata's PciPath form`);
  const tap = JSON.parse(ip(['-j', '-d', 'link', 'show', 'dev', 'tap-test'])) as { master?: string; mtu: number; flags: string[] }[];
  t.equal(tap[0]?.master, BRIDGE, 'host TAP on the bridge');
  t.equal(tap[0]?.mtu, 1500);
  t.ok(tap[0]?.flags.includes('UP'), 'host TAP up');

  start = Date.now();
  const links = await guestLinks(GUEST);
  t.comment(`guestLinks (one guest exec): ${Date.now() - start} ms`);
  const nic = links.find((l) => l.ifname === 'eth-test');
  t.ok(nic, 'guest has eth-test');
  t.equal(nic?.address, '02:42:20:6f:a3:69', 'with the MAC');
  t.equal(nic?.mtu, 1500, 'with the MTU');
  t.same(nic?.addr_info?.filter((x) => x.family === 'inet').map((x) => `${x.local}/${x.prefixlen}`), ['172.16.0.3/16'], 'with the address');

  const ping = await guestExec('ping', ['-c', '2', '-W', '3', '172.16.0.1']);
  t.equal(ping.exitcode, 0, `guest pings the bridge: ${ping.stdout}${ping.stderr}`);

  start = Date.now();
  await guestIpBatch(GUEST, ['route add 10.99.0.0/24 via 172.16.0.1 dev eth-test']);
  t.comment(`guestIpBatch: ${Date.now() - start} ms`);
  t.ok((await guestRoutes(GUEST)).some((r) => r.dst === '10.99.0.0/24' && r.gateway === '172.16.0.1' && r.dev === 'eth-test'), 'route added in the guest');
  const bad = await errorOf(guestIpBatch(GUEST, ['route add 10.99.0.0/24 via 172.16.0.1 dev eth-test']));
  t.ok(isOcinetError(bad) && bad.code === 'EEXEC', 'a failing line is EEXEC');
  t.match(bad.message, /File exists/, `with ip's stderr: ${bad.message}`);
  await guestIpBatch(GUEST, ['route del 10.99.0.0/24 via 172.16.0.1 dev eth-test']);
  t.notOk((await guestRoutes(GUEST)).some((r) => r.dst === '10.99.0.0/24'), 'route deleted in the guest');

  const dup = await errorOf(vmAddIface(GUEST, { ...EXAMPLE, device: 'tap-dup', hwAddr: '02:42:20:6f:a3:6a' }, { bridge: BRIDGE }));
  t.match(dup.message, /interface 'eth-test' already exists in the guest/, 'same name twice refused');
  t.notOk(hostHas('tap-dup'), 'no TAP made for the refused add');

  start = Date.now();
  await vmDelIface(GUEST, a, {});
  t.comment(`vmDelIface (device_del .. DEVICE_DELETED .. netdev_del): ${Date.now() - start} ms`);
  t.notOk((await guestLinks(GUEST)).some((l) => l.ifname === 'eth-test' || l.address === EXAMPLE.hwAddr), 'NIC gone from the guest');
  t.notOk(hostHas('tap-test'), 'TAP gone from the host');
  t.notMatch(await infoNetwork(GUEST.qmp), /eth-test/, 'no netdev or device left in QEMU');
  await vmDelIface(GUEST, a, {});
  t.pass('a second del is a no-op');
});

t.test('multi-queue: multi_queue TAP, mq=on, vectors=2N+2', async (t) => {
  const input: IfaceInput = { device: 'tap-mq', name: 'eth-mq', hwAddr: '02:42:20:6f:a3:70', mtu: 1400, queues: 4, IPAddresses: [{ address: '172.16.0.4', mask: '16' }] };
  const a = await vmAddIface(GUEST, input, { bridge: BRIDGE });
  t.match(ip(['-d', 'link', 'show', 'dev', 'tap-mq']), /tun type tap .*multi_queue/, 'host TAP is multi_queue');
  t.equal(await qmpDo(GUEST.qmp, 'qom-get', { path: '/machine/peripheral/nic-eth-mq', property: 'mq' }), true, 'mq=on');
  t.equal(await qmpDo(GUEST.qmp, 'qom-get', { path: '/machine/peripheral/nic-eth-mq', property: 'vectors' }), 10, 'vectors=10');
  const nic = (await guestLinks(GUEST)).find((l) => l.ifname === 'eth-mq');
  t.equal(nic?.mtu, 1400, 'guest NIC eth-mq with MTU 1400');
  // QEMU opened all 4 queues of the TAP; the 1-CPU guest enables only one, the kernel counts the rest as disabled.
  const m = /numqueues (\d+) numdisabled (\d+)/.exec(ip(['-d', 'link', 'show', 'dev', 'tap-mq']));
  t.equal(Number(m?.[1]) + Number(m?.[2]), 4, `QEMU attached 4 queues to the TAP (${m?.[0]})`);
  await vmDelIface(GUEST, a, {});
  t.notOk(hostHas('tap-mq'), 'TAP gone');
});

t.test('an existing TAP is reused and kept', async (t) => {
  ip(['tuntap', 'add', 'tap-keep', 'mode', 'tap']);
  ip(['link', 'set', 'tap-keep', 'mtu', '1400']);
  t.teardown(() => spawnSync('ip', ['link', 'del', 'tap-keep']));
  const a = await vmAddIface(GUEST, { device: 'tap-keep', name: 'eth-keep', hwAddr: '02:42:20:6f:a3:71', mtu: 1500 }, { bridge: BRIDGE });
  t.match(a, { createdTap: false, tapAttached: true, origMtu: 1400 }, 'reused, and what was changed is recorded');
  t.match(ip(['link', 'show', 'dev', 'tap-keep']), /mtu 1500 .*master ocvmbr0/);
  t.ok((await guestLinks(GUEST)).some((l) => l.ifname === 'eth-keep'), 'guest has eth-keep');
  await vmDelIface(GUEST, a, {});
  t.ok(hostHas('tap-keep'), 'the TAP is still there');
  const l = ip(['link', 'show', 'dev', 'tap-keep']);
  t.match(l, /mtu 1400/, 'MTU restored');
  t.notMatch(l, /master/, 'detached from the bridge again');

  // Reuse refused when it cannot work: a non-TAP under the name, a queue-mode mismatch.
  ip(['link', 'add', 'veth-x', 'type', 'veth', 'peer', 'name', 'veth-y']);
  t.teardown(() => spawnSync('ip', ['link', 'del', 'veth-x']));
  const notTap = await errorOf(vmAddIface(GUEST, { device: 'veth-x', name: 'eth-x', hwAddr: '02:42:20:6f:a3:72', mtu: 1500 }, {}));
  t.ok(isOcinetError(notTap) && notTap.code === 'ECONFLICT', 'ECONFLICT');
  t.match(notTap.message, /host device 'veth-x' exists and is a veth device, not a TAP/);
  const mq = await errorOf(vmAddIface(GUEST, { device: 'tap-keep', name: 'eth-x', hwAddr: '02:42:20:6f:a3:72', mtu: 1500, queues: 2 }, {}));
  t.match(mq.message, /TAP 'tap-keep' exists without multi_queue, but queues is 2/);
  t.notMatch(await infoNetwork(GUEST.qmp), /eth-x/, 'nothing plugged');
  t.ok(hostHas('tap-keep') && hostHas('veth-x'), 'the existing devices are left alone');
});

t.test('failures: clear errors, nothing left on the host', async (t) => {
  const input = (n: string): IfaceInput => ({ device: `tap-${n}`, name: `eth-${n}`, hwAddr: '02:42:20:6f:a3:80', mtu: 1500 });

  await t.test('QMP socket missing', async (t) => {
    const start = Date.now();
    const e = await errorOf(vmAddIface({ qmp: join(DIR, 'none/qmp.sock'), qga: GUEST.qga }, input('f1'), { bridge: BRIDGE }));
    t.match(e.message, /QMP socket .*none\/qmp\.sock: no such socket \(is QEMU running\?\)/, e.message);
    t.ok(Date.now() - start < 1000, 'at once');
    t.notOk(hostHas('tap-f1'), 'no TAP');
    const nb = await errorOf(vmAddIface(GUEST, input('f1'), { bridge: 'nobr0' }));
    t.match(nb.message, /bridge 'nobr0' does not exist/);
    const vu = await errorOf(vmAddIface(GUEST, { ...input('f1'), vhostUserSocket: join(DIR, 'no-vhost.sock') }, {}));
    t.ok(isOcinetError(vu) && vu.code === 'ENOTFOUND', `vhost-user socket missing: ${vu.message}`);
  });

  await t.test('agent not answering', async (t) => {
    const agent = fakeAgent(join(DIR, 'silent.sock'), 'silent');
    t.teardown(() => agent.close());
    const start = Date.now();
    const e = await errorOf(vmAddIface({ qmp: GUEST.qmp, qga: join(DIR, 'silent.sock') }, input('f2'), { bridge: BRIDGE }));
    t.match(e.message, /guest agent at .*silent\.sock did not answer within \d+ ms/, e.message);
    t.ok(Date.now() - start < 7000, `bounded: ${Date.now() - start} ms`);
    t.notOk(hostHas('tap-f2'), 'no TAP');
    t.notMatch(await infoNetwork(GUEST.qmp), /eth-f2/, 'nothing in QEMU');
    const links = await errorOf(guestLinks({ qmp: GUEST.qmp, qga: join(DIR, 'silent.sock') }));
    t.match(links.message, /did not answer/, 'guestLinks too');
  });

  await t.test('device_add refused (q35 root bus)', async (t) => {
    const q = await bareQemu('q35', 'q35');
    const agent = fakeAgent(join(DIR, 'q35-agent.sock'), 'empty');
    t.teardown(() => {
      agent.close();
      kill(q.pid);
    });
    const e = await errorOf(vmAddIface({ qmp: q.vmQmp, qga: join(DIR, 'q35-agent.sock') }, input('f3'), { bridge: BRIDGE }));
    t.match(e.message, /^device_add refused: Bus 'pcie\.0' does not support hotplugging$/, e.message);
    t.notOk(hostHas('tap-f3'), 'TAP removed');
    t.equal((await infoNetwork(q.vmQmp)).trim(), '', 'netdev_add rolled back');
  });

  await t.test('NIC never seen in the guest; vhost-user refused; unplug not acknowledged', async (t) => {
    const q = await bareQemu('paused', 'pc');
    const agent = fakeAgent(join(DIR, 'empty.sock'), 'empty');
    t.teardown(() => {
      agent.close();
      kill(q.pid);
    });
    const vm = { qmp: q.vmQmp, qga: join(DIR, 'empty.sock') };
    let start = Date.now();
    const e = await errorOf(vmAddIface(vm, input('f4'), { bridge: BRIDGE, timeoutMs: 1000 }));
    t.match(e.message, /the guest did not show a NIC with MAC 02:42:20:6f:a3:80 within \d+ ms/, e.message);
    // A paused guest cannot release the NIC: the error says so, the host is clean anyway.
    t.match(e.message, /rollback incomplete: unplug nic-eth-f4: .*did not release/);
    t.comment(`failed add with rollback: ${Date.now() - start} ms`);
    t.notOk(hostHas('tap-f4'), 'TAP removed');
    start = Date.now();
    const d = await errorOf(vmDelIface(vm, { device: 'tap-f4', name: 'eth-f4', hwAddr: '02:42:20:6f:a3:80', mtu: 1500, kind: 'tap', queues: 0, linkType: 'tap' }, { timeoutMs: 800 }));
    t.match(d.message, /device_del nic-eth-f4: the guest did not release the NIC within 800 ms \(no DEVICE_DELETED event/, d.message);
    t.ok(Date.now() - start < 3000, 'bounded');

    // vhost-user: a socket file nobody listens on.
    const dead = join(DIR, 'dead-vhost.sock');
    // A process binds it and dies by SIGKILL: the file stays, connect is refused.
    spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(dead)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    t.ok(existsSync(dead), 'dead socket file');
    const vu = await errorOf(vmAddIface(vm, { ...input('f5'), hwAddr: '02:42:20:6f:a3:81', vhostUserSocket: dead }, {}));
    t.match(vu.message, /chardev-add: .*Connection refused/, vu.message);
    t.notMatch(await infoNetwork(q.vmQmp), /f5/, 'nothing of it in QEMU');
    const cd = await qmpDo<{ label: string }[]>(q.vmQmp, 'query-chardev');
    t.notOk(cd.some((c) => c.label === 'char-eth-f5'), 'no chardev left');
  });

  await t.test('QEMU killed while the add waits for the guest', async (t) => {
    const q = await bareQemu('killed', 'pc');
    const agent = fakeAgent(join(DIR, 'empty2.sock'), 'empty');
    t.teardown(() => agent.close());
    const add = vmAddIface({ qmp: q.vmQmp, qga: join(DIR, 'empty2.sock') }, input('f6'), { bridge: BRIDGE, timeoutMs: 60_000 });
    add.catch(() => undefined);
    // The second interface listing is the wait for the NIC: the hot-plug is done.
    for (let i = 0; i < 200 && agent.requests.filter((r) => r === 'guest-network-get-interfaces').length < 2; i++) await sleep(25);
    t.ok(hostHas('tap-f6'), 'TAP made, NIC plugged');
    const start = Date.now();
    kill(q.pid);
    const e = await errorOf(add);
    t.ok(Date.now() - start < 3000, `rejected in ${Date.now() - start} ms`);
    t.match(e.message, /QEMU went away/, e.message);
    t.notOk(hostHas('tap-f6'), 'the TAP it made is removed');
    t.equal(await vmAlive({ qmp: q.vmQmp, qga: '' }), false, 'vmAlive false');
  });

  await t.test('del with QEMU gone removes only a TAP ocinet made', async (t) => {
    const gone = { qmp: join(DIR, 'killed/qmp.sock'), qga: join(DIR, 'killed/qga.sock') };
    await ensureTap('tap-g1', { queues: 0, mtu: 1500, bridge: BRIDGE });
    await ensureTap('tap-g2', { queues: 0, mtu: 1500 });
    t.teardown(() => deleteLink('tap-g2'));
    const base = { name: 'eth-g', hwAddr: '02:42:20:6f:a3:90', mtu: 1500, kind: 'tap' as const, queues: 0, linkType: 'tap' };
    await vmDelIface(gone, { ...base, device: 'tap-g1', createdTap: true }, {});
    t.notOk(hostHas('tap-g1'), 'created TAP removed');
    await vmDelIface(gone, { ...base, device: 'tap-g2' }, {});
    t.ok(hostHas('tap-g2'), 'TAP not known as ours is kept');
  });
});

t.test('the guest still works after all that', async (t) => {
  const a = await vmAddIface(GUEST, EXAMPLE, { bridge: BRIDGE });
  const ping = await guestExec('ping', ['-c', '1', '-W', '3', '172.16.0.1']);
  t.equal(ping.exitcode, 0, 'ping');
  await vmDelIface(GUEST, a, {});
  t.notOk(hostHas('tap-test'));
  t.same(ip(['-o', 'link', 'show', 'type', 'tun']).trim(), '', 'no TAP left on the host');
});

t.test('the real guest killed during an add: prompt rejection, TAP removed', async (t) => {
  const add = vmAddIface(GUEST, { ...EXAMPLE, device: 'tap-last', name: 'eth-last' }, { bridge: BRIDGE, timeoutMs: 60_000 });
  add.catch(() => undefined);
  // Kill as soon as the TAP is there: somewhere in netdev_add, device_add or the guest wait.
  for (let i = 0; i < 400 && !hostHas('tap-last'); i++) await sleep(5);
  const start = Date.now();
  kill(pids[0]);
  const e = await errorOf(add);
  t.ok(Date.now() - start < 3000, `rejected in ${Date.now() - start} ms: ${e.message}`);
  t.match(e.message, /QEMU (exited|went away|gone)/);
  t.notOk(hostHas('tap-last'), 'the TAP it made is removed');
  t.equal(await vmAlive(GUEST), false, 'vmAlive false');
  const gone = await errorOf(guestLinks(GUEST));
  t.match(gone.message, /guest agent socket .*: refused \(QEMU gone\?\)/, gone.message);
});
