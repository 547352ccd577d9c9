// A real QEMU guest (TCG) driven through QMP and qemu-ga: greeting, status,
// guest exec of ip/ipvsadm/conntrack, NIC hot-plug and unplug, and the
// failure cases (missing socket, QEMU killed mid-session).
import t from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isOcinetError } from '../core/base/errors.js';
import { QmpClient, QmpCommandError } from '../core/vm/qmp.js';
import { QgaClient, QgaCommandError } from '../core/vm/qga.js';

const ROOT = new URL('..', import.meta.url).pathname;
const DIR = mkdtempSync(join(tmpdir(), 'ocinet-qemu-'));
const MAC = '52:54:00:0c:1a:01';

function qemuPid(): number | undefined {
  try {
    return Number(readFileSync(join(DIR, 'qemu.pid'), 'utf8').trim()) || undefined;
  } catch {
    return undefined;
  }
}

function killQemu(): void {
  const pid = qemuPid();
  if (pid === undefined) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}

t.teardown(() => {
  killQemu();
  rmSync(DIR, { recursive: true, force: true });
});

t.test('missing QMP socket: clear error, fast', async (t) => {
  const start = Date.now();
  const err = await QmpClient.connect(join(DIR, 'nope.sock'), { timeoutMs: 5000 }).catch((e: unknown) => e);
  t.ok(isOcinetError(err) && err.code === 'EEXEC', 'OcinetError EEXEC');
  t.match(String(err), /QMP socket .*nope\.sock: no such socket/);
  t.ok(Date.now() - start < 1000, 'fails at once, not at the timeout');
  const qerr = await QgaClient.connect(join(DIR, 'nope.sock'), { timeoutMs: 5000 }).catch((e: unknown) => e);
  t.match(String(qerr), /guest agent socket .*: no such socket/);
});

t.test('build and boot the guest', async (t) => {
  let start = Date.now();
  // `make test` builds the guest outside the namespace (it downloads with apt); here it is a cache check.
  const b = spawnSync('bash', [join(ROOT, 'build/guest/build-guest.sh')], { stdio: ['ignore', 'inherit', 'pipe'], timeout: 900_000 });
  t.equal(b.status, 0, `build-guest.sh: ${b.stderr?.toString()}`);
  t.comment(`guest build: ${Date.now() - start} ms`);
  start = Date.now();
  const r = spawnSync('bash', [join(ROOT, 'build/guest/boot-guest.sh'), DIR], { stdio: ['ignore', 'inherit', 'pipe'], timeout: 120_000 });
  t.equal(r.status, 0, `boot-guest.sh: ${r.stderr?.toString()}`);
  t.comment(`guest boot: ${Date.now() - start} ms`);
  t.ok(qemuPid(), 'QEMU pid file');
});

t.test('QMP: greeting, status, errors', async (t) => {
  const qmp = await QmpClient.connect(join(DIR, 'qmp.sock'));
  t.teardown(() => qmp.close());
  t.ok(qmp.greeting.QMP.version.qemu.major >= 7, `QEMU ${JSON.stringify(qmp.greeting.QMP.version.qemu)}`);
  const st = await qmp.execute<{ status: string; running: boolean }>('query-status');
  t.equal(st.status, 'running');
  t.equal(st.running, true);
  const err = await qmp.execute('no-such-command').catch((e: unknown) => e);
  t.ok(err instanceof QmpCommandError && err.errorClass === 'CommandNotFound', 'QmpCommandError CommandNotFound');
  // Commands in flight together still get their own replies.
  const [a, b] = await Promise.all([qmp.execute<{ status: string }>('query-status'), qmp.execute<{ name?: string }>('query-name')]);
  t.equal(a.status, 'running');
  t.same(b, {});
  const ev = await qmp.waitEvent('NEVER_HAPPENS', undefined, 200).catch((e: unknown) => e);
  t.match(String(ev), /no NEVER_HAPPENS event within \d+ ms/);
  // QEMU serves one client per socket: a second one times out, clearly.
  const second = await QmpClient.connect(join(DIR, 'qmp.sock'), { timeoutMs: 500 }).catch((e: unknown) => e);
  t.match(String(second), /no greeting within \d+ ms/);
});

t.test('guest agent: ping, exec of ip, ipvsadm, conntrack', async (t) => {
  const qga = await QgaClient.connect(join(DIR, 'qga.sock'));
  t.teardown(() => qga.close());
  await qga.ping();
  t.pass('guest-ping');
  let start = Date.now();
  const ip = await qga.exec('ip', ['link']);
  t.comment(`guest exec ip link: ${Date.now() - start} ms`);
  t.equal(ip.exitcode, 0, ip.stderr);
  t.match(ip.stdout, /\d+: lo: <LOOPBACK,UP/);
  const ipvs = await qga.exec('ipvsadm', ['-Ln']);
  t.equal(ipvs.exitcode, 0, ipvs.stderr);
  t.match(ipvs.stdout, /IP Virtual Server version/);
  const ct = await qga.exec('conntrack', ['-L']);
  t.equal(ct.exitcode, 0, ct.stderr);
  const cat = await qga.exec('cat', [], { input: 'hello\nguest\n' });
  t.equal(cat.stdout, 'hello\nguest\n', 'stdin reaches the program');
  const sh = await qga.exec('sh', ['-c', 'echo oops >&2; exit 3']);
  t.same([sh.exitcode, sh.stderr], [3, 'oops\n'], 'exit code and stderr');
  const missing = await qga.exec('/no/such/program').catch((e: unknown) => e);
  t.ok(missing instanceof QgaCommandError, `missing program: ${String(missing)}`);
  start = Date.now();
  const slow = await qga.exec('sleep', ['5'], { timeoutMs: 500 }).catch((e: unknown) => e);
  t.match(String(slow), /still running after 500 ms/);
  t.ok(Date.now() - start < 2000, 'exec timeout is honoured');
  await qga.sync();
  await qga.ping();
  t.pass('sync and ping after a timed-out exec');
  const second = await QgaClient.connect(join(DIR, 'qga.sock'), { timeoutMs: 500 }).catch((e: unknown) => e);
  t.match(String(second), /guest-sync: no reply within \d+ ms/, 'second agent client times out');
});

t.test('hot-plug a TAP NIC, see it in the guest, unplug it', async (t) => {
  execFileSync('ip', ['tuntap', 'add', 'tapt0', 'mode', 'tap']);
  execFileSync('ip', ['link', 'set', 'tapt0', 'up']);
  t.teardown(() => spawnSync('ip', ['link', 'del', 'tapt0']));
  const qmp = await QmpClient.connect(join(DIR, 'qmp.sock'));
  const qga = await QgaClient.connect(join(DIR, 'qga.sock'));
  t.teardown(() => {
    qmp.close();
    qga.close();
  });
  let start = Date.now();
  await qmp.execute('netdev_add', { type: 'tap', id: 'net0', ifname: 'tapt0', script: 'no', downscript: 'no' });
  await qmp.execute('device_add', { driver: 'virtio-net-pci', id: 'nic0', netdev: 'net0', mac: MAC });
  t.comment(`netdev_add + device_add: ${Date.now() - start} ms`);
  const dup = await qmp.execute('device_add', { driver: 'virtio-net-pci', id: 'nic0', netdev: 'net0', mac: MAC }).catch((e: unknown) => e);
  t.ok(dup instanceof QmpCommandError, `duplicate device rejected: ${String(dup)}`);

  start = Date.now();
  let nic: string | undefined;
  while (!nic && Date.now() - start < 30_000) {
    const ifs = await qga.networkGetInterfaces();
    nic = ifs.find((i) => i['hardware-address'] === MAC)?.name;
    if (!nic) await new Promise((r) => setTimeout(r, 200));
  }
  t.ok(nic, `guest sees NIC ${nic} with ${MAC}`);
  t.comment(`NIC visible in guest after ${Date.now() - start} ms`);
  const link = await qga.exec('ip', ['link', 'set', nic ?? 'eth0', 'up']);
  t.equal(link.exitcode, 0, link.stderr);

  // Register the waiter first: the event may come before we look.
  start = Date.now();
  const deleted = qmp.waitEvent('DEVICE_DELETED', (e) => e.data?.device === 'nic0', 30_000);
  await qmp.execute('device_del', { id: 'nic0' });
  const ev = await deleted;
  t.equal(ev.data?.device, 'nic0', 'DEVICE_DELETED for nic0');
  await qmp.execute('netdev_del', { id: 'net0' });
  t.comment(`unplug: ${Date.now() - start} ms`);
  const after = await qga.networkGetInterfaces();
  t.notOk(after.some((i) => i['hardware-address'] === MAC), 'NIC gone from the guest');
});

t.test('QEMU killed: pending and later commands reject, no hang', async (t) => {
  const qmp = await QmpClient.connect(join(DIR, 'qmp.sock'));
  const qga = await QgaClient.connect(join(DIR, 'qga.sock'));
  const start = Date.now();
  const waiting = qmp.waitEvent('DEVICE_DELETED', undefined, 60_000);
  const pendingExec = qga.exec('sleep', ['30'], { timeoutMs: 60_000 });
  killQemu();
  const pending = qmp.execute('query-status', undefined, 60_000);
  const [p, w, g] = await Promise.allSettled([pending, waiting, pendingExec]);
  t.equal(p.status, 'rejected', 'pending QMP command rejects');
  t.match(p.status === 'rejected' ? String(p.reason) : '', /QEMU exited\?/);
  t.equal(w.status, 'rejected', 'event waiter rejects');
  t.equal(g.status, 'rejected', 'pending guest exec rejects');
  t.ok(Date.now() - start < 5000, `rejected in ${Date.now() - start} ms, not at the 60 s timeout`);
  t.ok(qmp.closed && qga.closed, 'clients report closed');
  const later = await qmp.execute('query-status').catch((e: unknown) => e);
  t.ok(isOcinetError(later) && later.code === 'EEXEC', 'later command rejects at once');
  const conn = await QmpClient.connect(join(DIR, 'qmp.sock'), { timeoutMs: 2000 }).catch((e: unknown) => e);
  // Just after SIGKILL the socket may still accept and reset: that, too, must say QEMU is gone.
  t.match(String(conn), /refused|no such socket|QEMU exited/, 'reconnect to a dead QEMU fails clearly');
});
