// Bounded output and time (issue 9, items 5 and 6): what programs and guests
// write is capped (head and tail kept), error lines stay one short line, the
// log is capped and rotates, and nothing waits forever.
import t, { type Test } from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { ERROR_LINE_MAX, errorLine } from '../core/base/errors.js';
import { MAX_STDERR, run } from '../core/base/exec.js';
import { MAX_ENTRY, MAX_LOG, OpLog } from '../core/state/log.js';
import { QgaClient } from '../core/vm/qga.js';
import { MAX_LINE } from '../core/vm/qmp.js';
import { guestRun } from '../core/vm/hotplug.js';
import { ROOT, tempDir } from './lib/env.js';
import { fakeAgent as agentOn, reply, type FakeAgent } from './lib/fake-agent.js';

const DIR = tempDir('bounded');
const MB20 = 20_000_000;

/** One line, within the cap, nothing of the 20 MB in it. */
function shortLine(t: Test, line: string, what: string): void {
  t.ok(line.length <= ERROR_LINE_MAX, `${what}: ${line.length} chars <= ${ERROR_LINE_MAX}`);
  t.notOk(line.includes('\n'), `${what}: one line`);
}

/**
 * Run `body` (an ES module's text, which may import core modules by path) in
 * a fresh node with tap's TypeScript loader; it prints one JSON line. The
 * child's peak RSS growth during the measured part is its own business:
 * the body reports it (VmHWM before and after).
 */
async function child(body: string): Promise<Record<string, unknown>> {
  const loader = process.execArgv.filter((a) => a.includes('typescript'));
  const head = `import { readFileSync } from 'node:fs';
const hwm = () => Number(/VmHWM:\\s+(\\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
`;
  const p = spawn(process.execPath, [...loader, '--input-type=module', '-e', head + body], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  p.stdout.on('data', (b: Buffer) => (out += b.toString()));
  p.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const code = await new Promise<number | null>((r) => p.on('close', r));
  const line = out.split('\n').find((l) => l.startsWith('{'));
  if (code !== 0 || !line) throw new Error(`child failed (${code}): ${err.slice(-2000)}`);
  return JSON.parse(line) as Record<string, unknown>;
}

t.test('errorLine: a 20 MB multi-line message is one short line, head and tail kept', async (t) => {
  const msg = `ipvsadm --restore: ${'x'.repeat(MB20 / 2)}\n${'y\n'.repeat(1000)}${'z'.repeat(MB20 / 2)} the real reason`;
  const line = errorLine(new Error(msg));
  shortLine(t, line, 'errorLine');
  t.match(line, /^ipvsadm --restore: x/, 'starts with what failed');
  t.match(line, /the real reason$/, 'ends with why');
  t.match(line, /…\[\d+ chars cut\]…/, 'says what was cut');
  t.equal(errorLine(new Error('a\n  b\nc')), 'a; b; c', 'short messages: newlines become "; " as before');
});

t.test('run(): 20 MB on stderr and a failure: one short error line, bounded memory', async (t) => {
  const r = await child(`
import { run } from './core/base/exec.ts';
import { errorLine } from './core/base/errors.ts';
await run('sh', ['-c', 'echo warm >&2; exit 1'], { allowFail: true });
const before = hwm();
let line = 'no error';
try {
  await run('sh', ['-c', 'head -c ${MB20} /dev/zero | tr "\\\\0" x >&2; echo " the end" >&2; exit 3']);
} catch (e) {
  line = errorLine(e);
}
console.log(JSON.stringify({ growth: hwm() - before, line }));
`);
  const line = String(r.line);
  shortLine(t, line, 'the error');
  t.match(line, /^sh -c .*x…\[\d+ chars cut\]…x+ the end$/, `names the program and keeps the end: ${line.slice(0, 60)}...${line.slice(-40)}`);
  const growth = Number(r.growth);
  // What is left is garbage the GC has not taken yet (the old code: ~76 MiB, every byte kept twice and more).
  t.ok(growth < 32 * 1024 * 1024, `peak RSS grew ${(growth / 1048576).toFixed(1)} MiB while 20 MB went through (< 32 MiB)`);
});

t.test('run(): stdout and stderr are capped, head and tail kept; legit large stdout whole', async (t) => {
  const big = await run('sh', ['-c', `head -c 3000000 /dev/zero | tr '\\0' a; echo; head -c 300000 /dev/zero | tr '\\0' e >&2; echo tail-of-stderr >&2`]);
  t.equal(big.stdout.length, 3_000_001, 'a 3 MB listing (e.g. iptables-save of a big host) comes back whole');
  t.equal(big.stdoutCut, 0);
  t.ok(big.stderr.length < MAX_STDERR + 100, `stderr kept to the cap (${big.stderr.length} chars)`);
  t.ok(big.stderrCut > 0, 'and says how much was cut');
  // t.ok, not t.match: a failing match would print the whole text.
  t.ok(/^e+…\[\d+ bytes cut\]…e+tail-of-stderr\n$/.test(big.stderr), `head, marker, tail: ${big.stderr.slice(0, 20)}...${big.stderr.slice(-40)}`);

  // A parsing caller never gets a cut listing: it fails with one line.
  const cut = await run('sh', ['-c', 'head -c 100000 /dev/zero'], { maxStdout: 1000 }).catch((e: unknown) => e);
  t.ok(cut instanceof Error, 'stdout over the cap of a successful run is an error');
  t.match(errorLine(cut), /output of 100000 bytes is over the 1000-byte cap/);
  // allowFail: the caller takes the cut text.
  const kept = await run('sh', ['-c', 'head -c 100000 /dev/zero | tr "\\0" o'], { maxStdout: 1000, allowFail: true });
  t.equal(kept.stdoutCut, 99_000);
  t.ok(/^o{500}…\[99000 bytes cut\]…o{500}$/.test(kept.stdout), 'head 500, marker, tail 500');
});

t.test('run(): a timeout is kept even when a grandchild holds the pipes open', async (t) => {
  const t0 = Date.now();
  const e = await run('sh', ['-c', 'sleep 20 & sleep 20'], { timeoutMs: 300 }).catch((x: unknown) => x);
  const ms = Date.now() - t0;
  t.match(errorLine(e), /timed out after 300 ms/);
  t.ok(ms < 3000, `rejected after ${ms} ms (not when the grandchild exits)`);
});

t.test('run(): doneWhen resolves once the output says the work is done, not at the exit; unmatched, the exit decides', async (t) => {
  const t0 = Date.now();
  const done = await run('sh', ['-c', 'echo partial; sleep 0.1; echo committed; exec sleep 20'], { doneWhen: (out) => /^committed\n/m.test(out) });
  const ms = Date.now() - t0;
  t.same({ code: done.code, stdout: done.stdout }, { code: 0, stdout: 'partial\ncommitted\n' }, 'resolved with what it printed so far');
  t.ok(ms < 3000, `resolved after ${ms} ms (not when the program exits)`);
  // The line never comes: a failure is still one error line, from the exit.
  const e = await run('sh', ['-c', 'echo partial; echo refused >&2; exit 1'], { doneWhen: (out) => out.includes('committed') }).catch((x: unknown) => x);
  t.match(errorLine(e), /refused/);
  const failed = await run('sh', ['-c', 'exit 3'], { allowFail: true, doneWhen: () => true });
  t.equal(failed.code, 3, 'no output at all: the exit code, as without doneWhen');
});

// ---- the guest agent ----

/**
 * A stand-in guest agent: answers guest-sync, guest-ping and guest-exec;
 * guest-exec-status is answered by `status` (which writes the reply itself,
 * so it can stream a huge one).
 */
function fakeAgent(path: string, status: (c: net.Socket, id: string) => void): FakeAgent {
  return agentOn(path, (c, msg) => {
    if (msg.execute === 'guest-sync') reply(c, { return: msg.arguments?.id });
    else if (msg.execute === 'guest-exec') reply(c, { return: { pid: 42 }, id: msg.id });
    else if (msg.execute === 'guest-exec-status') status(c, msg.id ?? '');
    else reply(c, { return: {}, id: msg.id });
  });
}

/** Stream a guest-exec-status reply whose err-data is `bytes` bytes of 'E', without building it whole. */
function hugeStatus(c: net.Socket, id: string, bytes: number): void {
  c.write(`{"return": {"exited": true, "exitcode": 1, "err-data": "`);
  const block = Buffer.from(Buffer.alloc(3 * 65536, 'E').toString('base64')); // 3-byte aligned: no padding inside
  for (let n = 0; n < bytes; n += 3 * 65536) c.write(block);
  c.write(`"}, "id": "${id}"}\n`);
}

t.test('guest agent: 20 MB of stderr in guest-exec-status fails that call with one line, bounded memory', async (t) => {
  const sock = join(DIR, 'huge.sock');
  const agent = fakeAgent(sock, (c, id) => hugeStatus(c, id, MB20));
  t.teardown(() => agent.close());
  const r = await child(`
import { QgaClient } from './core/vm/qga.ts';
import { errorLine } from './core/base/errors.ts';
const qga = await QgaClient.connect(${JSON.stringify(sock)});
await qga.ping();
const before = hwm();
let line = 'no error';
const t0 = Date.now();
try {
  const res = await qga.exec('/usr/sbin/ipvsadm', ['--restore'], { timeoutMs: 20000 });
  line = 'resolved with ' + res.stderr.length + ' chars of stderr';
} catch (e) {
  line = errorLine(e);
}
const ms = Date.now() - t0;
const growth = hwm() - before;
// The connection is still in step: the rest of the huge line is skipped.
let after = 'ok';
await qga.ping().catch((e) => { after = errorLine(e); });
qga.close();
console.log(JSON.stringify({ growth, line, ms, after }));
`);
  const line = String(r.line);
  shortLine(t, line, 'the error');
  t.match(line, new RegExp(`guest agent guest-exec-status: reply over ${MAX_LINE} bytes`), line);
  t.ok(Number(r.ms) < 10_000, `failed in ${String(r.ms)} ms, not at the timeout`);
  const growth = Number(r.growth);
  t.ok(growth < MAX_LINE + 8 * 1024 * 1024, `peak RSS grew ${(growth / 1048576).toFixed(1)} MiB for a 27 MB reply (< line cap + 8 MiB)`);
  t.equal(r.after, 'ok', 'the next request on the same connection works');
});

t.test('guest agent: legit large output whole, stderr capped head and tail, error lines short', async (t) => {
  const sock = join(DIR, 'big.sock');
  const stdout = 'TCP  0A000001:0050 rr\n'.repeat(100_000); // 2.2 MB: a 20000-rule listing's size
  const stderr = `${'w'.repeat(1_000_000)}\nipvsadm: the last line says why\n`;
  const agent = fakeAgent(sock, (c, id) =>
    c.write(JSON.stringify({ return: { exited: true, exitcode: 2, 'out-data': Buffer.from(stdout).toString('base64'), 'err-data': Buffer.from(stderr).toString('base64') }, id }) + '\n'),
  );
  t.teardown(() => agent.close());
  const r = await guestRun({ qmp: join(DIR, 'none'), qga: sock }, '/usr/sbin/ipvsadm', ['-Ln']);
  t.equal(r.exitcode, 2);
  t.ok(r.stdout === stdout, `stdout whole (${r.stdout.length} of ${stdout.length} chars)`);
  t.equal(r.stdoutCut, 0);
  t.ok(r.stderr.length < MAX_STDERR + 100, `stderr capped (${r.stderr.length} chars)`);
  t.equal(r.stderrCut, stderr.length - MAX_STDERR);
  t.ok(/^w+…\[\d+ bytes cut\]…w+\nipvsadm: the last line says why\n$/.test(r.stderr), `head, marker, tail: ...${r.stderr.slice(-50)}`);

  // An agent error with a huge description: one short line too.
  const bad = fakeAgent(join(DIR, 'bad.sock'), (c, id) => c.write(JSON.stringify({ error: { class: 'GenericError', desc: 'd'.repeat(1_000_000) }, id }) + '\n'));
  t.teardown(() => bad.close());
  const qga = await QgaClient.connect(join(DIR, 'bad.sock'));
  const e = await qga.exec('true').catch((x: unknown) => x);
  qga.close();
  t.ok(e instanceof Error && e.message.length <= ERROR_LINE_MAX + 40, `the agent's error desc is clipped (${(e as Error).message.length} chars)`);
});

t.test('guest agent: a guest that never finishes or never answers fails in bounded time', async (t) => {
  const running = fakeAgent(join(DIR, 'running.sock'), (c, id) => c.write(JSON.stringify({ return: { exited: false }, id }) + '\n'));
  const silent = fakeAgent(join(DIR, 'silent.sock'), () => undefined);
  t.teardown(() => {
    running.close();
    silent.close();
  });
  for (const [name, sock] of [['still running', 'running.sock'], ['no status reply', 'silent.sock']] as const) {
    const t0 = Date.now();
    const e = await guestRun({ qmp: join(DIR, 'none'), qga: join(DIR, sock) }, 'ipvsadm', ['--restore'], { timeoutMs: 800 }).catch((x: unknown) => x);
    const ms = Date.now() - t0;
    t.ok(e instanceof Error, `${name}: an error`);
    t.match(errorLine(e), /still running after 800 ms|no reply to 1 status polls/, `${name}: ${errorLine(e)}`);
    t.ok(ms < 3000, `${name}: after ${ms} ms`);
  }
});

// ---- a reply that goes missing ----

/**
 * An agent that answers in order, as qemu-ga does, but may lose or delay what a
 * guest-exec-status poll (by its count, from 1) is owed: `plan(n)` says how.
 */
function pollingAgent(path: string, plan: (poll: number) => 'lose' | 'late' | 'exited' | 'running' | 'forgot' | 'silent'): FakeAgent & { state: { silentAll: boolean } } {
  let polls = 0;
  let after: Promise<void> = Promise.resolve();
  const state = { silentAll: false };
  // Replies go out in order: one held back delays the ones after it.
  const send = (c: net.Socket, body: object, ms = 0): void => {
    after = after.then(() => new Promise((r) => setTimeout(() => (reply(c, body), r()), ms)));
  };
  const agent = agentOn(path, (c, msg) => {
    if (state.silentAll && msg.execute !== 'guest-exec') return;
    if (msg.execute === 'guest-sync') return send(c, { return: msg.arguments?.id });
    if (msg.execute === 'guest-exec') return send(c, { return: { pid: 42 }, id: msg.id });
    if (msg.execute !== 'guest-exec-status') return send(c, { return: {}, id: msg.id });
    const exited = { return: { exited: true, exitcode: 3, 'out-data': Buffer.from('done\n').toString('base64') }, id: msg.id };
    const how = plan(++polls);
    if (how === 'lose' || how === 'silent') {
      if (how === 'silent') state.silentAll = true;
      return;
    }
    if (how === 'late') return send(c, exited, 1_500); // past a poll's least reply time (1 s)
    if (how === 'running') return send(c, { return: { exited: false }, id: msg.id });
    if (how === 'forgot') return send(c, { error: { class: 'GenericError', desc: "Invalid parameter 'pid'" }, id: msg.id });
    send(c, exited);
  });
  return Object.assign(agent, { state });
}

t.test('guest agent: a status poll whose reply is lost costs a resync, not the exec\'s deadline', async (t) => {
  const lost = pollingAgent(join(DIR, 'lost.sock'), (n) => (n === 2 ? 'lose' : n === 1 ? 'running' : 'exited'));
  t.teardown(() => lost.close());
  const qga = await QgaClient.connect(join(DIR, 'lost.sock'), { timeoutMs: 300, sync: false });
  const r = await qga.exec('/usr/sbin/ipvsadm', ['--restore'], { timeoutMs: 600_000 });
  qga.close();
  t.equal(r.exitcode, 3, 'the exit status of the poll after the resync');
  t.equal(r.stdout, 'done\n');
  t.same(lost.requests, ['guest-exec', 'guest-exec-status', 'guest-exec-status', 'guest-sync', 'guest-exec-status'], 'the lost poll, a resync, the poll again');

  // Only late, not lost: it comes before the resync's reply and is taken; no poll again.
  const late = pollingAgent(join(DIR, 'late.sock'), () => 'late');
  t.teardown(() => late.close());
  const q2 = await QgaClient.connect(join(DIR, 'late.sock'), { timeoutMs: 300, sync: false });
  const r2 = await q2.exec('/usr/sbin/ipvsadm', ['--restore'], { timeoutMs: 600_000 });
  q2.close();
  t.equal(r2.exitcode, 3, 'the late reply is the result');
  t.same(late.requests, ['guest-exec', 'guest-exec-status', 'guest-sync'], 'one poll, one resync');

  // The lost reply was the one that said the program ended: the agent has forgotten the pid.
  const forgot = pollingAgent(join(DIR, 'forgot.sock'), (n) => (n === 1 ? 'lose' : 'forgot'));
  t.teardown(() => forgot.close());
  const q3 = await QgaClient.connect(join(DIR, 'forgot.sock'), { timeoutMs: 300, sync: false });
  const e3 = await q3.exec('/usr/sbin/ipvsadm', ['--restore'], { timeoutMs: 600_000 }).catch((x: unknown) => x);
  q3.close();
  t.match(errorLine(e3), /guest pid 42 ended, but the agent's reply saying so was lost \(its exit status is unknown\)/, errorLine(e3));

  // Every poll lost, though resyncs are answered: a few tries, then one line.
  const never = pollingAgent(join(DIR, 'never.sock'), () => 'lose');
  t.teardown(() => never.close());
  const q4 = await QgaClient.connect(join(DIR, 'never.sock'), { timeoutMs: 300, sync: false });
  const e4 = await q4.exec('/usr/sbin/ipvsadm', ['--restore'], { timeoutMs: 600_000 }).catch((x: unknown) => x);
  q4.close();
  t.match(errorLine(e4), /no reply to 4 status polls of guest pid 42, though the agent answers a resync/, errorLine(e4));

  // guest-exec's own reply lost: not asked again (the program may have started), one line.
  const noPid = agentOn(join(DIR, 'nopid.sock'), (c, msg) => {
    if (msg.execute === 'guest-sync') reply(c, { return: msg.arguments?.id });
  });
  t.teardown(() => noPid.close());
  const q5 = await QgaClient.connect(join(DIR, 'nopid.sock'), { timeoutMs: 300 });
  const e5 = await q5.exec('/usr/sbin/ipvsadm', ['--restore'], { input: '-C\n', timeoutMs: 600_000 }).catch((x: unknown) => x);
  q5.close();
  t.match(errorLine(e5), /guest exec \/usr\/sbin\/ipvsadm --restore: the agent's reply to guest-exec was lost; the program may be running in the guest/, errorLine(e5));
  t.same(noPid.requests, ['guest-sync', 'guest-exec', 'guest-sync'], 'guest-exec is not sent twice');
});

t.test('guest agent: a held connection that stopped answering is closed, not lent again', async (t) => {
  const sock = join(DIR, 'stops.sock');
  const stateDir = join(DIR, 'hold-state');
  mkdirSync(stateDir, { mode: 0o700 });
  const agent = pollingAgent(sock, (n) => (n === 1 ? 'exited' : 'silent'));
  t.teardown(() => agent.close());
  const hold = { stateDir, key: 'vm-stops', lingerMs: 30_000 };
  const holdFile = join(stateDir, 'agent', 'vm-stops.sock');

  const first = await QgaClient.connect(sock, { timeoutMs: 300, sync: false, hold });
  t.equal((await first.exec('/bin/true')).exitcode, 3);
  first.close();
  t.ok(existsSync(holdFile), 'the answered connection is held');

  const second = await QgaClient.connect(sock, { timeoutMs: 300, sync: false, hold });
  t.equal(agent.connections(), 1, 'the next call borrows it');
  const e = await second.exec('/bin/true').catch((x: unknown) => x);
  second.close();
  t.match(errorLine(e), /guest agent stopped answering: no reply to guest-exec-status within 1000 ms, nor to a resync after it within 1000 ms/, errorLine(e));
  let gone = false;
  for (let i = 0; i < 100 && !gone; i++) {
    gone = !existsSync(holdFile);
    if (!gone) await new Promise((r) => setTimeout(r, 50));
  }
  t.ok(gone, 'its holder closed it and went, long before its 30 s linger');

  agent.state.silentAll = false;
  const third = await QgaClient.connect(sock, { timeoutMs: 300, sync: false, hold: { ...hold, lingerMs: 0 } });
  await third.ping();
  third.close();
  t.equal(agent.connections(), 2, 'the call after it connects anew');
});

// ---- the log ----

t.test('log: each entry is capped, the file rotates to .1, the format is kept', async (t) => {
  const dir = tempDir('boundedlog');
  const file = join(dir, 'ocinet.log');
  const log = new OpLog(file);
  log.step('prepare');
  // 20 entries of 1 MB each: was 20 MB of log.
  for (let i = 0; i < 20; i++) log.write({ op: 'setup', id: `big-${i}`, ok: false, error: `ipvsadm: ${'e'.repeat(1_000_000)}`, code: 'EEXEC' });
  const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean);
  t.equal(lines.length, 20, 'one line per entry');
  t.ok(lines.every((l) => l.length <= MAX_ENTRY), `every line <= ${MAX_ENTRY} (longest ${Math.max(...lines.map((l) => l.length))})`);
  const e0 = JSON.parse(lines[0]!) as { op: string; id: string; ok: boolean; ms: number; steps: Record<string, number>; error: string; code: string };
  t.match(e0, { op: 'setup', id: 'big-0', ok: false, code: 'EEXEC' }, 'the fields readers use are there');
  t.type(e0.ms, 'number');
  t.type(e0.steps.prepare, 'number', 'steps kept');
  t.ok(/^ipvsadm: e+…\[\d+ chars cut\]…e+$/.test(e0.error), `the error clipped: ${e0.error.slice(0, 30)}...`);

  // Many entries: the file never grows much past MAX_LOG, one old generation is kept.
  let maxSize = 0;
  for (let i = 0; i < 600; i++) {
    log.write({ op: 'warning', ok: true, warning: `w${i} ${'v'.repeat(4000)}` });
    maxSize = Math.max(maxSize, statSync(file).size);
  }
  t.ok(existsSync(`${file}.1`), 'rotated to ocinet.log.1');
  t.ok(maxSize <= MAX_LOG + MAX_ENTRY, `ocinet.log stayed <= ${MAX_LOG + MAX_ENTRY} bytes (max ${maxSize})`);
  t.ok(statSync(`${file}.1`).size <= MAX_LOG + MAX_ENTRY, 'so did ocinet.log.1');
  const last = readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { warning: string });
  t.match(last.at(-1)!.warning, /^w599 /, 'the newest entry is in ocinet.log');
});
