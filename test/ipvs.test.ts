// `ocinet ipvs` (kata-ipvs) end to end against the booted test guest: every
// example of the kata-ipvs documentation in order, a full 20000-rule table,
// validation of every rule with a bad input, the container-sandbox error on a
// kernel without IP_VS, and the hook's io.ocinet.ipvs annotation.
// TCG is slow: never list the whole 20000-rule table (~16 s), count lines of
// /proc/net/ip_vs instead.
import t, { type Test } from 'tap';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { join } from 'node:path';
import { guestLinks } from '../core/vm/hotplug.js';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, linkSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import net from 'node:net';
import { vmTarget } from '../core/kata/records.js';
import { bootGuest } from './lib/guest.js';
import { CLI, cli, hook, sandbox, sh, sleep, snapshot, state, tempDir, type HookRun } from './lib/env.js';
import { fakeAgent, reply } from './lib/fake-agent.js';

const DIR = tempDir('ipvs');
const guest = bootGuest(DIR, t, join(DIR, 'state'));
const G = guest.sockets;
const qemuPid = guest.qemuPid;
const stateDir = join(DIR, 'state');
const VM = ['--qmp', G.qmp, '--qga', G.qga, '--state-dir', stateDir];
// The guest's sockets live in the test's temp dir: the hook entry allows annotations to name them there.
const HOOK_ARGS = ['--state-dir', stateDir, '--subnet', '10.213.0.0/24', '--allow-vm-sockets', join(DIR, 'guest')];
const BRIDGE = 'ocipvs0';
// The documented example rule file (kata-ipvs, "import them in batches").
const DOC_FILE = `-A -t 10.10.11.12:100 -s rr -p 3000
-a -t 10.10.11.12:100 -r 172.16.0.1:80 -m
-a -t 10.10.11.12:100 -r 172.16.0.1:81 -m
-a -t 10.10.11.12:100 -r 172.16.0.1:82 -m
`;

const inGuest = guest.exec;

/** Services + real servers in the guest's table: /proc/net/ip_vs has 3 header lines. */
async function guestRules(): Promise<number> {
  const r = await inGuest('/bin/busybox', ['wc', '-l', '/proc/net/ip_vs']);
  if (r.exitcode !== 0) throw new Error(`wc /proc/net/ip_vs in the guest: ${r.stderr}`);
  return Number(r.stdout.trim().split(/\s+/)[0]) - 3;
}

/** One service's listing, straight from the guest's ipvsadm (a few lines, cheap at any table size). */
async function guestService(vip: string, proto = '-t'): Promise<string> {
  return (await inGuest('/usr/sbin/ipvsadm', ['-Ln', proto, vip])).stdout;
}

const ipvs = (params: string, sb: string[] = VM): Promise<HookRun> => cli(['ipvs', 'ipvsadm', '--parameters', params, ...sb]);
const restore = (text: string, sb: string[] = VM): Promise<HookRun> => cli(['ipvs', 'ipvsadm', '--restore', '-', ...sb], text);
const ipvsCleanup = (params: string, sb: string[] = VM): Promise<HookRun> => cli(['ipvs', 'cleanup', '--parameters', params, ...sb]);

/** The offending token named in the message: quoted or standing alone, not as part of something else. */
function namesToken(stderr: string, token: string): boolean {
  const esc = token.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`(^|[\\s'"\`(=])${esc}($|[\\s'"\`),:;=])`).test(stderr);
}

const hex = (ip: string): string => ip.split('.').map((o) => Number(o).toString(16).padStart(2, '0').toUpperCase()).join('');
const hexEp = (ep: string): string => {
  const [ip, port] = ep.split(':');
  return `${hex(ip!)}:${Number(port).toString(16).padStart(4, '0').toUpperCase()}`;
};

/** 5000 services × 3 real servers = 20000 rules, all real servers in 172.17.0.0/16. */
const SERVICES = 5000;
const vipOf = (i: number): string => `10.10.${Math.floor(i / 250)}.${(i % 250) + 1}:80`;
const ripOf = (i: number, k: number): string => `172.17.${k}.${(i % 250) + 1}:${8000 + Math.floor(i / 250)}`;
function bigFile(services = SERVICES): string {
  const lines: string[] = [];
  for (let i = 0; i < services; i++) {
    lines.push(`-A -t ${vipOf(i)} -s rr -p 3000`);
    for (let k = 1; k <= 3; k++) lines.push(`-a -t ${vipOf(i)} -r ${ripOf(i, k)} -m`);
  }
  return lines.join('\n') + '\n';
}

t.test('the guest boots and gets a NIC on 172.16.0.0/15', async (t) => {
  t.equal(guest.boot.status, 0, guest.boot.stderr);
  await sh('ip', ['link', 'add', BRIDGE, 'type', 'bridge']);
  await sh('ip', ['addr', 'add', '172.16.0.1/15', 'dev', BRIDGE]);
  await sh('ip', ['link', 'set', BRIDGE, 'up']);
  const iface = '{"device":"tap-ipvs","name":"eth-ipvs","IPAddresses":[{"address":"172.16.0.3","mask":"15"}],"hwAddr":"02:42:20:6f:a3:71","mtu":1500}';
  const add = await cli(['network', 'add-iface', ...VM, '--bridge', BRIDGE, '-'], iface);
  t.equal(add.exitCode, 0, add.stderr);
  t.equal((await inGuest('/bin/busybox', ['ping', '-c1', '-W3', '172.16.0.1'])).exitcode, 0, 'guest pings the bridge');
  t.equal(await guestRules(), 0, 'the guest starts with an empty IPVS table');
});

t.test('every example of the kata-ipvs documentation, in order', async (t) => {
  const ok = async (r: Promise<HookRun>, what: string): Promise<HookRun> => {
    const x = await r;
    t.equal(x.exitCode, 0, `${what}: ${x.stderr}`);
    t.equal(x.stderr, '', `${what}: nothing on stderr`);
    return x;
  };
  // 1. add a virtual service
  await ok(ipvs('--add-service --tcp-service 172.17.0.7:80 --scheduler rr --persistent 3000'), 'add-service');
  t.match(await guestService('172.17.0.7:80'), /TCP {2}172\.17\.0\.7:80 rr persistent 3000/, 'service in the guest');
  // 2. modify it
  await ok(ipvs('--edit-service --tcp-service 172.17.0.7:80 --scheduler rr --persistent 5000'), 'edit-service');
  t.match(await guestService('172.17.0.7:80'), /TCP {2}172\.17\.0\.7:80 rr persistent 5000/, 'persistence changed in the guest');
  // 4. add a real server (no forwarding flag: NAT by default)
  await ok(ipvs('--add-server --tcp-service 172.17.0.7:80 --real-server 172.17.0.4:80 --weight 100'), 'add-server');
  t.match(await guestService('172.17.0.7:80'), /-> 172\.17\.0\.4:80\s+Masq\s+100\s/, 'real server in the guest, NAT (Masq), weight 100');
  // 5. modify it
  await ok(ipvs('--edit-server --tcp-service 172.17.0.7:80 --real-server 172.17.0.4:80 --weight 200'), 'edit-server');
  // 7. query: stdout is ipvsadm's own listing
  const list = await ok(ipvs('--list'), 'list');
  t.match(list.stdout, /^IP Virtual Server version/, 'ipvsadm\'s own output');
  t.match(list.stdout, /TCP {2}172\.17\.0\.7:80 rr persistent 5000/, 'list shows the service');
  t.match(list.stdout, /-> 172\.17\.0\.4:80\s+Masq\s+200\s/, 'list shows the server, Masq, weight 200');
  t.equal(await guestRules(), 2);
  // 6. delete the real server
  await ok(ipvs('--delete-server --tcp-service 172.17.0.7:80 --real-server 172.17.0.4:80'), 'delete-server');
  t.notMatch(await guestService('172.17.0.7:80'), /172\.17\.0\.4/, 'server gone');
  t.equal(await guestRules(), 1);
  // 3. delete the virtual service
  await ok(ipvs('--delete-service --tcp-service 172.17.0.7:80'), 'delete-service');
  t.equal(await guestRules(), 0, 'table empty again');
  // 8. batch import of the documented rule file
  await ok(restore(DOC_FILE), 'restore of the documented file');
  t.equal(await guestRules(), 4, '1 service + 3 servers');
  const svc = await guestService('10.10.11.12:100');
  t.match(svc, /TCP {2}10\.10\.11\.12:100 rr persistent 3000/);
  for (const port of [80, 81, 82]) t.match(svc, new RegExp(`-> 172\\.16\\.0\\.1:${port}\\s+Masq\\s+1\\s`), `server :${port}, Masq`);
  // 10. timeouts
  await ok(ipvs('--set 100 100 200'), '--set');
  t.match((await inGuest('/usr/sbin/ipvsadm', ['-L', '--timeout'])).stdout, /Timeout \(tcp tcpfin udp\): 100 100 200/, 'timeouts set in the guest');
  // 9. conntrack cleanup: nothing to delete is still success
  await ok(ipvsCleanup('--orig-dst 172.17.0.4 --protonum tcp'), 'cleanup with 0 entries');
  t.equal(await guestRules(), 4, 'cleanup leaves the IPVS table alone');
});

t.test('cleanup deletes matching conntrack entries', async (t) => {
  const ins = await inGuest('/usr/sbin/conntrack', ['-I', '-s', '172.16.0.3', '-d', '172.17.0.4', '-p', 'tcp', '--sport', '40000', '--dport', '80', '--state', 'ESTABLISHED', '-t', '300', '-u', 'SEEN_REPLY']);
  t.equal(ins.exitcode, 0, `conntrack -I in the guest: ${ins.stderr.trim()}`);
  const keep = await inGuest('/usr/sbin/conntrack', ['-I', '-s', '172.16.0.3', '-d', '172.17.0.5', '-p', 'tcp', '--sport', '40000', '--dport', '80', '--state', 'ESTABLISHED', '-t', '300', '-u', 'SEEN_REPLY']);
  t.equal(keep.exitcode, 0, keep.stderr);
  const r = await ipvsCleanup('--orig-dst 172.17.0.4 --protonum tcp');
  t.equal(r.exitCode, 0, r.stderr);
  const left = (await inGuest('/usr/sbin/conntrack', ['-L', '-p', 'tcp'])).stdout;
  t.notMatch(left, /dst=172\.17\.0\.4 /, 'the matching entry is gone');
  t.match(left, /dst=172\.17\.0\.5 /, 'others stay');
  await inGuest('/usr/sbin/conntrack', ['-F']);
});

t.test('every scheduler, udp services', async (t) => {
  const scheds = ['rr', 'wrr', 'lc', 'wlc', 'lblc', 'lblcr', 'dh', 'sh', 'sed', 'nq'];
  for (const [i, s] of scheds.entries()) {
    const r = await ipvs(`-A -u 172.17.0.8:${5300 + i} -s ${s}`);
    t.equal(r.exitCode, 0, `scheduler ${s}: ${r.stderr}`);
  }
  t.match(await guestService(`172.17.0.8:${5300 + 9}`, '-u'), /UDP {2}172\.17\.0\.8:5309 nq/);
  const r = await ipvs('-a -u 172.17.0.8:5300 -r 172.17.0.9:53 -w 0');
  t.equal(r.exitCode, 0, r.stderr);
  t.match(await guestService('172.17.0.8:5300', '-u'), /-> 172\.17\.0\.9:53\s+Masq\s+0\s/, 'weight 0, NAT by default (short options)');
  t.equal(await guestRules(), 4 + 11);
  for (let i = 0; i < scheds.length; i++) t.equal((await ipvs(`-D -u 172.17.0.8:${5300 + i}`)).exitCode, 0);
  t.equal(await guestRules(), 4, 'back to the documented 4 rules');
});

t.test('validation: bad input is refused before anything runs', async (t) => {
  const before = await guestRules();
  t.equal(before, 4);
  const S = '--tcp-service 10.10.11.12:100';
  // [what, --parameters text, the token the message must name]
  const cases: [string, string, string][] = [
    ['bad ip', '--add-service --tcp-service 172.17.0.300:80 --scheduler rr', '172.17.0.300:80'],
    ['ip without port', '--add-service --tcp-service 172.17.0.7 --scheduler rr', '172.17.0.7'],
    ['ipv6', '--add-service --tcp-service [::1]:80 --scheduler rr', '[::1]:80'],
    ['port 0', '--add-service --tcp-service 172.17.0.7:0 --scheduler rr', '172.17.0.7:0'],
    ['port 65536', '--add-service --tcp-service 172.17.0.7:65536 --scheduler rr', '172.17.0.7:65536'],
    ['real server port 0', `--add-server ${S} --real-server 172.16.0.1:0`, '172.16.0.1:0'],
    ['scheduler xx', '--add-service --tcp-service 172.17.0.7:80 --scheduler xx', 'xx'],
    ['persistent 0', '--add-service --tcp-service 172.17.0.7:80 --scheduler rr --persistent 0', '0'],
    ['persistent 2678401', '--add-service --tcp-service 172.17.0.7:80 --scheduler rr --persistent 2678401', '2678401'],
    ['persistent not a number', '--edit-service --tcp-service 10.10.11.12:100 --scheduler rr --persistent 5s', '5s'],
    ['weight 65536', `--add-server ${S} --real-server 172.16.0.1:90 --weight 65536`, '65536'],
    ['weight -1', `--edit-server ${S} --real-server 172.16.0.1:80 --weight -1`, '-1'],
    ['--set 1296001', '--set 100 100 1296001', '1296001'],
    ['--set with 2 values', '--set 100 100', '--set'],
    ['--set with 4 values', '--set 1 2 3 4', '--set'],
    ['unknown option', '--add-service --tcp-service 172.17.0.7:80 --scheduler rr --bogus', '--bogus'],
    ['undocumented ipvsadm option (fwmark)', '--add-service -f 1 --scheduler rr', '-f'],
    ['undocumented ipvsadm command (zero)', '--zero', '--zero'],
    ['option of another command', `--delete-service ${S} --weight 3`, '--weight'],
    ['missing service', '--add-service --scheduler rr', '--add-service'],
    ['missing real server', `--add-server ${S} --weight 3`, '--add-server'],
    ['shell metacharacters', '--add-service --tcp-service 172.17.0.7:80 --scheduler rr ;reboot', ';reboot'],
    ['command substitution', '--add-service --tcp-service 172.17.0.7:80 --scheduler $(reboot)', '$(reboot)'],
  ];
  for (const [what, params, token] of cases) {
    const r = await ipvs(params);
    t.equal(r.exitCode, 1, `${what}: exit 1`);
    t.match(r.stderr, /invalid input of IPVS rule/, `${what}: says invalid input of IPVS rule`);
    t.ok(namesToken(r.stderr, token), `${what}: names '${token}' (${r.stderr.trim()})`);
    t.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line`);
    t.equal(r.stdout, '', `${what}: nothing on stdout`);
  }
  const cl: [string, string, string][] = [
    ['cleanup: bad protonum', '--orig-dst 172.17.0.4 --protonum icmp', 'icmp'],
    ['cleanup: bad address', '--orig-dst 172.17.0.400 --protonum tcp', '172.17.0.400'],
    ['cleanup: unknown option', '--orig-dst 172.17.0.4 --protonum tcp --src 1.2.3.4', '--src'],
  ];
  for (const [what, params, token] of cl) {
    const r = await ipvsCleanup(params);
    t.equal(r.exitCode, 1, `${what}: exit 1`);
    t.match(r.stderr, /invalid input of IPVS rule/, what);
    t.ok(namesToken(r.stderr, token), `${what}: names '${token}' (${r.stderr.trim()})`);
  }
  t.equal(await guestRules(), before, 'no rule changed');
  t.match(await guestService('10.10.11.12:100'), /TCP {2}10\.10\.11\.12:100 rr persistent 3000/, 'the service is untouched');
  t.equal((await inGuest('/bin/busybox', ['true'])).exitcode, 0, 'the guest is still up (nothing went through a shell)');
});

t.test('--clear, then restore: validation, warnings, limits', async (t) => {
  const clear = await ipvs('--clear');
  t.equal(clear.exitCode, 0, clear.stderr);
  t.equal(await guestRules(), 0, '--clear empties the table');
  t.equal((await ipvs('-C')).exitCode, 0, 'clearing an empty table is fine');

  const bad: [string, string, RegExp, string?][] = [
    ['empty input', '', /empty/],
    ['blank input', '\n  \n', /empty/],
    ['bad scheduler on line 3', '-A -t 10.10.11.12:100 -s rr\n-a -t 10.10.11.12:100 -r 172.16.0.1:80 -m\n-A -t 10.10.11.13:100 -s xx\n', /line 3/, 'xx'],
    ['bad weight on line 2', '-A -t 10.10.11.12:100 -s rr\n-a -t 10.10.11.12:100 -r 172.16.0.1:80 -m -w 65536\n', /line 2/, '65536'],
    ['metacharacters on line 2', '-A -t 10.10.11.12:100 -s rr\n-a -t 10.10.11.12:100 -r 172.16.0.1:80 -m ;reboot\n', /line 2/, ';reboot'],
    ['a non-restore command on line 2', '-A -t 10.10.11.12:100 -s rr\n-C\n', /line 2/, '-C'],
    ['port 0 on line 1', '-A -t 10.10.11.12:0 -s rr\n', /line 1/, '10.10.11.12:0'],
  ];
  for (const [what, input, re, token] of bad) {
    const r = await restore(input);
    t.equal(r.exitCode, 1, `${what}: exit 1`);
    t.match(r.stderr, /invalid input of IPVS rule/, `${what}: invalid input`);
    t.match(r.stderr, re, `${what}: says where (${r.stderr.trim()})`);
    if (token) t.ok(namesToken(r.stderr, token), `${what}: names '${token}'`);
  }
  t.equal(await guestRules(), 0, 'no line of a refused file was applied');

  // Over the limit: 20001 rules are refused before anything runs.
  const over = await restore(bigFile() + '-A -t 10.99.0.1:80 -s rr\n');
  t.equal(over.exitCode, 1);
  t.match(over.stderr, /20001/, `says how many (${over.stderr.trim()})`);
  t.match(over.stderr, /20000/, 'and the limit');
  t.equal(await guestRules(), 0, 'nothing applied');

  // -m missing in a restore file: a warning, the restore proceeds.
  const noM = await restore('-A -t 10.10.11.12:100 -s rr\n-a -t 10.10.11.12:100 -r 172.16.0.1:80\n');
  t.equal(noM.exitCode, 0, noM.stderr);
  t.match(noM.stderr, /warning/i, 'warns');
  t.match(noM.stderr, /line 2/, 'names the line');
  t.match(noM.stderr, /-m/, 'mentions -m');
  t.equal(await guestRules(), 2, 'the rules are in');
  t.equal((await ipvs('--clear')).exitCode, 0);
  t.equal(await guestRules(), 0);
});

t.test('20000 rules: restore, the exact table, the limit', async (t) => {
  const file = bigFile();
  t.equal(file.split('\n').filter(Boolean).length, 20000);
  const t0 = Date.now();
  const r = await restore(file);
  const ms = Date.now() - t0;
  t.equal(r.exitCode, 0, r.exitCode === 0 ? 'restored' : `${r.stderr.trim()} (guest console: ${guest.consoleTail()})`);
  t.equal(r.stderr, '', 'no warnings');
  t.comment(`restore of 20000 rules took ${ms} ms`);
  t.equal(await guestRules(), 20000, '/proc/net/ip_vs has 20003 lines');

  // Exactly those rules: the whole of /proc/net/ip_vs (cheap, unlike ipvsadm -Ln) against the file.
  const proc = (await inGuest('/bin/cat', ['/proc/net/ip_vs'], 60_000)).stdout.split('\n').slice(3).filter(Boolean);
  const got: string[] = [];
  let svc = '';
  for (const line of proc) {
    const s = /^TCP {2}([0-9A-F]{8}:[0-9A-F]{4}) rr {2}persistent \d+/.exec(line);
    const m = /^ {2}-> ([0-9A-F]{8}:[0-9A-F]{4})\s+Masq\s+1\s/.exec(line);
    if (s) got.push((svc = s[1]!));
    else if (m) got.push(`${svc} ${m[1]}`);
    else got.push(`unexpected: ${line}`);
  }
  const want: string[] = [];
  for (let i = 0; i < SERVICES; i++) {
    want.push(hexEp(vipOf(i)));
    for (let k = 1; k <= 3; k++) want.push(`${hexEp(vipOf(i))} ${hexEp(ripOf(i, k))}`);
  }
  t.same(got.sort(), want.sort(), 'the guest holds exactly the restored rules (rr, persistent, Masq, weight 1)');

  for (const i of [0, 1234, 2500, 4999]) {
    const out = await guestService(vipOf(i));
    t.match(out, new RegExp(`TCP {2}${vipOf(i).replace(/\./g, '\\.')} rr persistent 3000`), `service ${i}`);
    for (let k = 1; k <= 3; k++) t.match(out, new RegExp(`-> ${ripOf(i, k).replace(/\./g, '\\.')}\\s+Masq\\s+1\\s`), `service ${i} server ${k}`);
  }

  const more = await ipvs('--add-service --tcp-service 10.99.0.1:80 --scheduler rr');
  t.equal(more.exitCode, 1, 'one more service is refused');
  t.match(more.stderr, /rule limit 20000 reached/);
  const srv = await ipvs(`--add-server --tcp-service ${vipOf(0)} --real-server 172.17.9.9:80`);
  t.equal(srv.exitCode, 1, 'one more server is refused');
  t.match(srv.stderr, /rule limit 20000 reached/);
  // Edits and deletes are not adds: fine at the limit.
  const edit = await ipvs(`--edit-server --tcp-service ${vipOf(0)} --real-server ${ripOf(0, 1)} --weight 7`);
  t.equal(edit.exitCode, 0, edit.stderr);
  t.match(await guestService(vipOf(0)), new RegExp(`-> ${ripOf(0, 1).replace(/\./g, '\\.')}\\s+Masq\\s+7\\s`), 'edit at the limit works');

  const again = await restore(DOC_FILE);
  t.equal(again.exitCode, 1, 'restore into a non-empty table is refused');
  t.match(again.stderr, /restore refused: the sandbox already has 20000 rules/);
  t.equal(await guestRules(), 20000, 'count unchanged');
  t.notMatch(await guestService('10.10.11.12:100'), /10\.10\.11\.12/, 'nothing of the refused file went in');

  // With one rule freed, one add fits again.
  t.equal((await ipvs(`--delete-server --tcp-service ${vipOf(4999)} --real-server ${ripOf(4999, 3)}`)).exitCode, 0);
  const fits = await ipvs(`--add-server --tcp-service ${vipOf(4999)} --real-server 172.17.9.9:80`);
  t.equal(fits.exitCode, 0, fits.stderr);
  t.equal(await guestRules(), 20000);

  const clear = await ipvs('--clear');
  t.equal(clear.exitCode, 0, clear.stderr);
  t.equal(await guestRules(), 0, '--clear empties the full table');
});

t.test('container sandbox on a kernel without IP_VS: a clear error', async (t) => {
  const sb = await sandbox();
  const C = ['--pid', String(sb.pid), '--state-dir', stateDir];
  for (const [what, r] of [
    ['--list', await ipvs('--list', C)],
    ['add-service', await ipvs('--add-service --tcp-service 172.17.0.7:80 --scheduler rr', C)],
    ['restore', await restore(DOC_FILE, C)],
  ] as const) {
    t.equal(r.exitCode, 1, `${what}: exit 1`);
    t.match(r.stderr, /no IP_VS/, `${what}: says the kernel has no IP_VS (${r.stderr.trim()})`);
    t.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line`);
  }
  const badIn = await ipvs('--add-service --tcp-service 172.17.0.7:80 --scheduler xx', C);
  t.equal(badIn.exitCode, 1);
  t.match(badIn.stderr, /invalid input of IPVS rule.*'xx'/, 'validation still comes first');
  await sb.kill();
});

t.test('what one call asks of the agent: one connection, one guest exec, no other process, no guest-sync', async (t) => {
  // A stand-in agent (answers at once, so each exec is polled once): the exact requests of each call.
  const sock = join(DIR, 'count-agent.sock');
  const fakeState = join(DIR, 'count-state');
  let rules = 5;
  let fileCommands = true;
  const execs: string[] = [];
  const procIpVs = (): string => `IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n${'TCP  0A0A0001:0050 rr\n'.repeat(rules)}`;
  const agent = fakeAgent(sock, (c, msg) => {
    const ok = (body: unknown): void => reply(c, { return: body, id: msg.id });
    if (msg.execute === 'guest-sync') reply(c, { return: msg.arguments?.id });
    else if (msg.execute.startsWith('guest-file-') && !fileCommands) reply(c, { error: { class: 'CommandNotFound', desc: `Command ${msg.execute} has been disabled` }, id: msg.id });
    else if (msg.execute === 'guest-file-open') ok(1000);
    else if (msg.execute === 'guest-file-read') ok({ count: procIpVs().length, 'buf-b64': Buffer.from(procIpVs()).toString('base64'), eof: true });
    else if (msg.execute === 'guest-exec') {
      execs.push([msg.arguments?.path, ...(msg.arguments?.arg ?? [])].join(' '));
      ok({ pid: 7 });
    } else if (msg.execute === 'guest-exec-status') {
      const wc = execs.at(-1)?.includes(' wc ') ? `${rules + 3} /proc/net/ip_vs\n` : '';
      ok({ exited: true, exitcode: 0, 'out-data': Buffer.from(wc).toString('base64') });
    } else ok({});
  });
  t.teardown(() => agent.close());
  const FAKE = ['--qmp', join(DIR, 'count-qmp.sock'), '--qga', sock, '--state-dir', fakeState];
  const recordedField = (key: 'ipvsRules' | 'ipvsadmMs'): number | undefined => {
    try {
      const dir = join(fakeState, 'sandboxes');
      const f = readdirSync(dir).find((x) => x.endsWith('.json'));
      return f ? (JSON.parse(readFileSync(join(dir, f), 'utf8')) as Record<typeof key, number | undefined>)[key] : undefined;
    } catch {
      return undefined;
    }
  };
  const recorded = (): number | undefined => recordedField('ipvsRules');
  const call = async (params: string): Promise<string[]> => {
    agent.requests.length = 0;
    execs.length = 0;
    const r = await ipvs(params, FAKE);
    t.equal(r.exitCode, 0, `${params}: ${r.stderr}`);
    return [...agent.requests];
  };
  const READ = ['guest-file-open', 'guest-file-read', 'guest-file-close'];
  const EXEC = ['guest-exec', 'guest-exec-status'];

  t.same(await call('-A -t 10.10.0.9:80 -s rr'), [...READ, ...EXEC], 'an add: the table read, then one exec');
  t.same(execs, ['/usr/sbin/ipvsadm -A -t 10.10.0.9:80 -s rr'], 'the only process started is ipvsadm');
  t.equal(recorded(), 6, 'the record: the count before, plus the one accepted add');
  t.equal(typeof recordedField('ipvsadmMs'), 'number', 'and how long the add ran, where the next one-entry command polls first');
  t.same(await call('-a -t 10.10.0.9:80 -r 172.17.0.4:80'), [...READ, ...EXEC], 'an add-server: the same');
  rules = 3;
  t.same(await call('-D -t 10.10.0.9:80'), [...EXEC, ...READ], 'a delete: one exec, then the table read');
  t.equal(recorded(), 3, 'the record: the count read after it');
  t.same(await call('-E -t 10.10.0.7:80 -s wrr'), [...EXEC, ...READ], 'an edit: the same');
  t.same(await call('--list'), [...EXEC], 'a list: one exec');
  t.same(await call('--set 1 2 3'), [...EXEC], 'a --set: one exec');
  t.same(await call('--clear'), [...EXEC], 'a clear: one exec');
  t.equal(recorded(), undefined, 'the record of an empty table goes');

  rules = 20000;
  agent.requests.length = 0;
  const full = await ipvs('-A -t 10.10.0.9:80 -s rr', FAKE);
  t.equal(full.exitCode, 1, 'an add at the limit is refused');
  t.match(full.stderr, /rule limit 20000 reached/);
  t.notOk(agent.requests.includes('guest-exec'), 'before anything runs in the guest');

  // An agent with the file commands disabled (some distributions ship it so): `wc -l` in the guest.
  fileCommands = false;
  rules = 4;
  t.same(await call('-A -t 10.10.0.9:80 -s rr'), ['guest-file-open', ...EXEC, ...EXEC], 'file commands disabled: counted by an exec');
  t.same(execs, ['/bin/busybox wc -l /proc/net/ip_vs', '/usr/sbin/ipvsadm -A -t 10.10.0.9:80 -s rr']);
  t.equal(recorded(), 5);
});

t.test('a restore whose end the agent reported in a reply that was lost: the kernel\'s count decides', async (t) => {
  // A stand-in agent that loses the reply saying the restore ended, then no longer knows its pid.
  const sock = join(DIR, 'lost-agent.sock');
  let rules = 0;
  let applies = 0;
  let nextPid = 100;
  const restorePids = new Set<number>();
  const forgotten = new Set<number>();
  const execs: string[] = [];
  const agent = fakeAgent(sock, (c, msg) => {
    const ok = (body: unknown): void => reply(c, { return: body, id: msg.id });
    const procIpVs = `IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n${'TCP  0A0A0001:0050 rr\n'.repeat(rules)}`;
    if (msg.execute === 'guest-sync') reply(c, { return: msg.arguments?.id });
    else if (msg.execute === 'guest-file-open') ok(1000);
    else if (msg.execute === 'guest-file-read') ok({ count: procIpVs.length, 'buf-b64': Buffer.from(procIpVs).toString('base64'), eof: true });
    else if (msg.execute === 'guest-exec') {
      const argv = msg.arguments?.arg ?? [];
      execs.push(argv.join(' '));
      const pid = nextPid++;
      if (argv[0] === '--restore') {
        rules = applies;
        restorePids.add(pid);
      } else if (argv[0] === '-C') rules = 0;
      ok({ pid });
    } else if (msg.execute === 'guest-exec-status') {
      const pid = msg.arguments?.pid ?? 0;
      // The reply saying the restore ended goes missing; asked again, the agent no longer knows it.
      if (restorePids.delete(pid)) forgotten.add(pid);
      else if (forgotten.has(pid)) reply(c, { error: { class: 'GenericError', desc: "Invalid parameter 'pid'" }, id: msg.id });
      else ok({ exited: true, exitcode: 0 });
    } else ok({});
  });
  t.teardown(() => agent.close());
  const FAKE = ['--qmp', join(DIR, 'lost-qmp.sock'), '--qga', sock, '--state-dir', join(DIR, 'lost-state')];

  applies = 4;
  const all = await restore(DOC_FILE, FAKE);
  t.equal(all.exitCode, 0, `every line in, by the kernel's count: ${all.stderr}`);
  t.ok(agent.requests.includes('guest-sync'), 'the lost reply was followed by a resync');
  t.same(execs, ['--restore'], 'no undo');

  const cleared = await ipvs('--clear', FAKE);
  t.equal(cleared.exitCode, 0, cleared.stderr);
  execs.length = 0;
  applies = 2;
  const half = await restore(DOC_FILE, FAKE);
  t.equal(half.exitCode, 1, 'fewer rules than lines: a failure');
  t.match(half.stderr, /ended, but the agent's reply saying so was lost \(its exit status is unknown\)/, half.stderr.trim());
  t.same(execs, ['--restore', '-C'], 'and the table emptied again');
});

t.test('the hook: io.ocinet.ipvs restores rules once the network is up', async (t) => {
  // The hook's own network must be what routes to the real servers: drop the test NIC. Held
  // (opt-in) for long enough that the hook's setup borrows the connection, as it does from a
  // kata-network call just before it.
  const del = await cli(['network', 'del-iface', ...VM, '--agent-hold', '3000', '-'], '{"name":"eth-ipvs"}');
  t.equal(del.stdout, 'null', del.stderr);
  t.equal(await guestRules(), 0);
  const before = await snapshot(stateDir);
  const ann = { 'io.ocinet.mode': 'tap', 'io.ocinet.qmp': G.qmp, 'io.ocinet.qga': G.qga, 'io.ocinet.ipvs': DOC_FILE };
  const up = await hook(HOOK_ARGS, state('vmipvs', 'creating', qemuPid(), { annotations: ann }));
  t.equal(up.exitCode, 0, up.stderr);
  t.ok((await guestLinks(G)).some((l) => l.ifname === 'eth0'), 'guest has eth0');
  t.equal(await guestRules(), 4, 'the documented 4 rules are in the guest');
  const svc = await guestService('10.10.11.12:100');
  t.match(svc, /TCP {2}10\.10\.11\.12:100 rr persistent 3000/);
  t.match(svc, /-> 172\.16\.0\.1:82\s+Masq\s+1\s/);
  const down = await hook(HOOK_ARGS, state('vmipvs', 'stopped'));
  t.equal(down.exitCode, 0, down.stderr);
  t.notOk((await guestLinks(G)).some((l) => l.ifname === 'eth0'), 'NIC unplugged from the guest');
  t.equal(await snapshot(stateDir), before, 'TAP, rules and lease gone');
  t.equal(await guestRules(), 0, 'the IPVS rules it restored are gone from the guest');
  await inGuest('/usr/sbin/ipvsadm', ['-C']);
});

t.test('the hook: a bad io.ocinet.ipvs fails the start, nothing left', async (t) => {
  t.equal(await guestRules(), 0);
  const before = await snapshot(stateDir);
  const base = { 'io.ocinet.mode': 'tap', 'io.ocinet.qmp': G.qmp, 'io.ocinet.qga': G.qga };
  const cases: [string, string, RegExp][] = [
    ['scheduler xx', DOC_FILE.replace('-s rr', '-s xx'), /invalid input of IPVS rule.*line 1.*'xx'/],
    ['empty', '', /invalid input of IPVS rule.*empty/],
    // Valid syntax, refused by the guest's kernel (no such service) after two rules went in.
    ['server of an unknown service', DOC_FILE.split('\n').slice(0, 2).join('\n') + '\n-a -t 10.10.11.13:100 -r 172.16.0.1:80 -m\n', /ipvs|ipvsadm|IPVS|[Ss]ervice/],
  ];
  for (const [what, rules, re] of cases) {
    const r = await hook(HOOK_ARGS, state(`vmbad${cases.findIndex((c) => c[0] === what)}`, 'creating', qemuPid(), { annotations: { ...base, 'io.ocinet.ipvs': rules } }));
    t.not(r.exitCode, 0, `${what}: setup fails`);
    t.match(r.stderr, re, `${what}: says why (${r.stderr.trim()})`);
    t.match(r.stderr, /io\.ocinet\.ipvs|ipvs/, `${what}: names the annotation or ipvs`);
    t.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line`);
    t.notOk((await guestLinks(G)).some((l) => l.ifname === 'eth0'), `${what}: no NIC left in the guest`);
    t.equal(await guestRules(), 0, `${what}: no IPVS rule left in the guest`);
    t.equal(await snapshot(stateDir), before, `${what}: nothing left on the host`);
  }
  await sh('ip', ['link', 'del', BRIDGE]);
});

// ---- the agent connection kept between calls (--agent-hold; core/vm/agent-hold.ts) ----
// These go last: the final one kills QEMU.

const holdFile = join(stateDir, 'agent', `${vmTarget(G).key}.sock`);

/** QEMU's end of each connection it accepted on the agent socket (inodes). */
async function agentConns(): Promise<string[]> {
  const out = (await sh('ss', ['-xHn', 'src', G.qga])).stdout;
  return out.split('\n').filter((l) => / ESTAB /.test(l)).map((l) => l.trim().split(/\s+/)[5]!);
}

/** The process listening on the hold socket. */
async function holderPid(): Promise<number | undefined> {
  const m = /pid=(\d+)/.exec((await sh('ss', ['-xlHnp', 'src', holdFile])).stdout);
  return m ? Number(m[1]) : undefined;
}

/** Waits (up to 10 s) until no holder is left: its socket file gone, no connection to QEMU. */
async function holderGone(): Promise<boolean> {
  for (let i = 0; i < 200; i++) {
    if (!existsSync(holdFile) && (await holderPid()) === undefined && (await agentConns()).length === 0) return true;
    await sleep(50);
  }
  return false;
}

const HOLD = (ms: number | string): string[] => [...VM, '--agent-hold', String(ms)];

/** An add of service `vip` that leaves its connection held for `ms`: the holder's pid. */
async function heldBy(t: Test, vip: string, ms: number): Promise<number> {
  const r = await ipvs(`-A -t ${vip} -s rr`, HOLD(ms));
  t.equal(r.exitCode, 0, r.stderr);
  const pid = await holderPid();
  t.ok(pid, `held for ${ms} ms`);
  return pid!;
}

t.test('by default a call keeps nothing; with --agent-hold it keeps its connection for the next, which borrows it; it closes after the linger', async (t) => {
  t.ok(await holderGone(), 'no holder to start with');
  const plain = await ipvs('-A -t 10.20.0.9:80 -s rr');
  t.equal(plain.exitCode, 0, plain.stderr);
  t.notOk(existsSync(holdFile), 'no --agent-hold: no holder');
  t.ok(await holderGone(), 'and no connection left');
  const first = await ipvs('-A -t 10.20.0.1:80 -s rr', HOLD(500));
  t.equal(first.exitCode, 0, first.stderr);
  t.equal(statSync(holdFile).mode & 0o777, 0o600, 'the hold socket is 0600');
  t.equal(statSync(join(stateDir, 'agent')).mode & 0o777, 0o700, 'in a 0700 dir of the state dir');
  const conns = await agentConns();
  t.equal(conns.length, 1, 'one connection to QEMU stays open');
  const pid = await holderPid();
  t.ok(pid, 'a holder listens');
  const second = await ipvs('-A -t 10.20.0.2:80 -s rr', HOLD(500));
  t.equal(second.exitCode, 0, second.stderr);
  t.same(await agentConns(), conns, 'the second call used the same connection');
  t.equal(await holderPid(), pid, 'and the same holder');
  t.match(await guestService('10.20.0.2:80'), /TCP {2}10\.20\.0\.2:80 rr/, 'its rule is in the guest');
  t.ok(await holderGone(), 'after the linger (500 ms): no holder, no file, no connection');
  const cleared = await ipvs('--clear', HOLD(0));
  t.equal(cleared.exitCode, 0, cleared.stderr);
});

t.test('--agent-hold 0 keeps nothing; a bad --agent-hold is one line and changes nothing', async (t) => {
  const r = await ipvs('-A -t 10.20.0.3:80 -s rr', HOLD(0));
  t.equal(r.exitCode, 0, r.stderr);
  t.notOk(existsSync(holdFile), 'no hold socket');
  t.ok(await holderGone(), 'no connection left');
  for (const bad of ['-1', '1.5', 'abc', '60001', '', '0x10']) {
    const b = await ipvs('-A -t 10.20.0.4:80 -s rr', HOLD(bad));
    t.equal(b.exitCode, 1, `--agent-hold '${bad}' refused`);
    t.match(b.stderr, /--agent-hold takes whole milliseconds from 0 to 60000/, `--agent-hold '${bad}': says what it takes`);
    t.equal(b.stderr.trim().split('\n').length, 1, `--agent-hold '${bad}': one line`);
  }
  t.equal(await guestRules(), 1, 'no rule was added by a refused call');
  t.notOk(existsSync(holdFile), 'and no holder made');
  await ipvs('--clear', HOLD(0));
});

t.test('a client that is not ocinet waits for the held connection and is served once the holder lets go', async (t) => {
  const r = await ipvs('-A -t 10.20.0.5:80 -s rr', HOLD(1500));
  t.equal(r.exitCode, 0, r.stderr);
  t.ok(existsSync(holdFile), 'held');
  const sock = net.connect(G.qga);
  const id = 4242;
  const answer = new Promise<boolean>((resolve) => {
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      // QEMU passes our bytes on only once it serves us: by then the holder has let go of its file.
      if (buf.includes(`"return": ${id}`)) resolve(!existsSync(holdFile));
    });
    sock.on('error', () => resolve(false));
    setTimeout(() => resolve(false), 15_000);
  });
  sock.write(`\xff${JSON.stringify({ execute: 'guest-sync', arguments: { id } })}\n`, 'latin1');
  t.ok(await answer, 'the other client is answered, after the holder went');
  sock.destroy();
  t.ok(await holderGone());
  await ipvs('--clear', HOLD(0));
});

t.test('a borrower killed mid-call, a holder killed: the next call works', async (t) => {
  const pid = await heldBy(t, '10.20.1.1:80', 20_000);
  for (const [i, ms] of [20, 60, 100, 140].entries()) {
    const p = spawn(CLI, ['ipvs', 'ipvsadm', '--parameters', `-A -t 10.20.2.${i + 1}:80 -s rr`, ...HOLD(20_000)], { stdio: 'ignore' });
    await sleep(ms);
    p.kill('SIGKILL');
    await new Promise((res) => p.once('exit', res));
    const next = await ipvs(`-A -t 10.20.3.${i + 1}:80 -s rr`, HOLD(20_000));
    t.equal(next.exitCode, 0, `a call killed after ${ms} ms: the next one works (${next.stderr.trim()})`);
    t.match(await guestService(`10.20.3.${i + 1}:80`), /rr/, 'its rule is in the guest');
  }
  t.equal(await holderPid(), pid, 'the holder outlived its borrowers');
  process.kill(pid!, 'SIGKILL');
  await sleep(100);
  t.ok(existsSync(holdFile), 'a killed holder leaves its socket file');
  const after = await ipvs('-A -t 10.20.4.1:80 -s rr', HOLD(20_000));
  t.equal(after.exitCode, 0, `the next call connects itself: ${after.stderr}`);
  const again = await holderPid();
  t.ok(again && again !== pid, 'and a new holder took the place of the dead one');
  t.match(await guestService('10.20.4.1:80'), /rr/);
  // ocinet gc: a dead holder's file goes, a live one stays and goes on lending.
  const live = await cli(['gc', '--json', '--state-dir', stateDir]);
  t.equal(live.exitCode, 0, live.stderr);
  t.notMatch(live.stdout, /agent\//, 'gc leaves a live holder alone');
  t.equal(await holderPid(), again, 'which still listens');
  process.kill(again!, 'SIGKILL');
  await sleep(100);
  const gc = await cli(['gc', '--json', '--state-dir', stateDir]);
  t.equal(gc.exitCode, 0, gc.stderr);
  t.match(gc.stdout, new RegExp(`agent/${vmTarget(G).key}\\.sock`), 'gc names the dead holder\'s file');
  t.notOk(existsSync(holdFile), 'and removes it');
  const third = await ipvs('-A -t 10.20.4.2:80 -s rr', HOLD(20_000));
  t.equal(third.exitCode, 0, third.stderr);
  t.ok(await holderPid(), 'the next call holds again');
  process.kill((await holderPid())!, 'SIGTERM');
  t.ok(await holderGone(), 'a holder stopped with SIGTERM leaves nothing');
  await ipvs('--clear', HOLD(0));
});

t.test('only the holder\'s own user may borrow; a connection to another agent is not lent', async (t) => {
  const pid = await heldBy(t, '10.20.5.1:80', 20_000);
  // A hard link of the hold socket where nobody can reach it: the holder's own check, not the dirs', is tried.
  const open = join(DIR, 'open');
  mkdirSync(open, { mode: 0o755 });
  chmodSync(DIR, 0o711);
  const link = join(open, 'hold.sock');
  linkSync(holdFile, link);
  chmodSync(link, 0o666);
  const script = `const s = require('net').connect(${JSON.stringify(link)}); let n = 0; s.on('data', (d) => (n += d.length)); s.on('close', () => console.log('bytes ' + n)); s.on('error', (e) => console.log('error ' + e.code));`;
  const nobody = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', script], { env: { PATH: process.env.PATH }, encoding: 'utf8' });
  chmodSync(holdFile, 0o600);
  rmSync(open, { recursive: true });
  chmodSync(DIR, 0o700);
  t.equal(nobody.stdout.trim(), 'bytes 0', `another user gets nothing and is let go (${nobody.stderr.trim()})`);
  t.equal(await holderPid(), pid, 'the holder goes on');
  const next = await ipvs('-A -t 10.20.5.2:80 -s rr', HOLD(20_000));
  t.equal(next.exitCode, 0, next.stderr);
  const conns = await agentConns();

  // The same --qmp with another --qga (the hold is found by the sandbox's key): the held
  // connection is QEMU's agent, not this one, so the call connects to this one itself.
  const other = join(DIR, 'other-qga.sock');
  const agent = fakeAgent(other, (c, msg) => {
    if (msg.execute === 'guest-exec') reply(c, { return: { pid: 9 }, id: msg.id });
    else if (msg.execute === 'guest-exec-status') reply(c, { return: { exited: true, exitcode: 0, 'out-data': Buffer.from('listed\n').toString('base64') }, id: msg.id });
    else reply(c, { return: {}, id: msg.id });
  });
  t.teardown(() => agent.close());
  const list = await ipvs('--list', ['--qmp', G.qmp, '--qga', other, '--state-dir', stateDir, '--agent-hold', '0']);
  t.equal(list.exitCode, 0, list.stderr);
  t.equal(list.stdout, 'listed', 'the other agent answered');
  t.same(agent.requests, ['guest-exec', 'guest-exec-status'], 'on a connection of its own');
  t.same(await agentConns(), conns, 'the held connection to QEMU was not used or closed');
  await ipvs('--clear', HOLD(0));
});

t.test('calls at the same time share the held connection one at a time', async (t) => {
  await heldBy(t, '10.20.7.1:80', 5_000);
  const conns = await agentConns();
  // Adds wait for the sandbox's lock; cleanups take none and queue at the holder.
  const runs = await Promise.all([
    ...[2, 3, 4].map((i) => ipvs(`-A -t 10.20.7.${i}:80 -s rr`, HOLD(5_000))),
    ...[1, 2].map(() => ipvsCleanup('--orig-dst 172.17.9.9 --protonum tcp', HOLD(5_000))),
  ]);
  runs.forEach((r, i) => t.equal(r.exitCode, 0, `call ${i + 1}: ${r.stderr}`));
  for (const i of [1, 2, 3, 4]) t.match(await guestService(`10.20.7.${i}:80`), /rr/, `10.20.7.${i} in the guest`);
  t.same(await agentConns(), conns, 'all on the one held connection');
  await ipvs('--clear', HOLD(0));
});

t.test('QEMU gone: its holder goes, and its file', async (t) => {
  const pid = await heldBy(t, '10.20.6.1:80', 60_000);
  guest.kill();
  t.ok(await holderGone(), 'the holder ended with QEMU, long before its linger');
  // Gone, or a zombie: this test is its pid namespace's init, and node reaps only its own children.
  let state = '';
  try {
    state = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '')[0]!;
  } catch {
    state = 'gone';
  }
  t.ok(state === 'gone' || state === 'Z', `its process ended (${state})`);
});
