// Issue 13: a container's start and stop run no program. The veth pair and
// the container's side are made over rtnetlink from the hook's process, the
// nftables transactions go through libnftables in it (native.node). What `ip`
// used to make is what the kernel holds now; a refused request is one line
// and leaves nothing; without libnftables the hook runs nft as before.
import t from 'tap';
import { execa } from 'execa';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
import { cleanup, HOOK, hook, inNs, readDb, ROOT, sandbox, sh, sleep, snapshot, state, tempDir, type HookRun, type Sandbox } from './lib/env.js';
import { containerMac, hostVethMac, stateId } from '../core/state/names.js';

const dir = tempDir('native');
const sid = stateId(dir);
const NET = ['--state-dir', dir, '--subnet', '10.231.0.0/24', '--bridge', 'ocnat0', '--firewall', 'nftables'];
const baseline = await snapshot(dir);
t.teardown(() => cleanup(dir));

interface Link {
  ifname: string;
  address: string;
  mtu: number;
  flags: string[];
  master?: string;
  linkinfo?: { info_kind?: string; info_slave_kind?: string; info_slave_data?: { hairpin?: boolean } };
}
const link = async (args: string[], pid?: number): Promise<Link> => {
  const cmd = ['ip', '-j', '-d', 'link', 'show', ...args];
  const r = pid ? await inNs(pid, cmd) : await sh(cmd[0]!, cmd.slice(1));
  return (JSON.parse(r.stdout) as Link[])[0]!;
};

/** Live processes (not zombies) running the hook's bundle, in this test's pid namespace. */
function hookProcesses(): string[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .flatMap((pid) => {
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        return cmd.includes('ocinet-hook') ? [`${pid}: ${cmd.replace(/\0/g, ' ')}`] : [];
      } catch {
        return []; // gone meanwhile
      }
    });
}

async function box(tt: { teardown(fn: () => unknown): void }): Promise<Sandbox> {
  const sb = await sandbox();
  tt.teardown(() => sb.kill());
  return sb;
}

t.test('the veth pair and the container side, as the kernel holds them; teardown while it runs leaves nothing', async (t) => {
  const a = await box(t);
  const r = await hook([...NET, '--mtu', '1400', '--publish', '8080:80'], state('a', 'creating', a.pid));
  t.equal(r.exitCode, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { ip: string; gateway: string; hostVeth: string; mac: string };
  const host = await link(['dev', out.hostVeth]);
  t.equal(host.mtu, 1400, 'host side: the MTU asked for');
  t.equal(host.address, hostVethMac('a', sid), "host side: ocinet's pinned MAC");
  t.equal(host.master, 'ocnat0', 'host side: on the bridge');
  t.ok(host.flags.includes('UP'), 'host side: up');
  t.equal(host.linkinfo?.info_kind, 'veth', 'a veth');
  t.equal(host.linkinfo?.info_slave_data?.hairpin, true, 'hairpin on (a container reaching its own published port)');

  const eth0 = await link(['dev', 'eth0'], a.pid);
  t.equal(eth0.mtu, 1400, 'container side: the MTU');
  t.equal(eth0.address, containerMac('a', sid), "container side: ocinet's pinned MAC");
  t.ok(eth0.flags.includes('UP'), 'container side: up');
  t.ok((await link(['dev', 'lo'], a.pid)).flags.includes('UP'), 'loopback up');
  const addrs = (await inNs(a.pid, ['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0'])).stdout;
  t.match(addrs, new RegExp(`inet ${out.ip.replace(/\./g, '\\.')}/24 `), 'its address');
  const route = (await inNs(a.pid, ['ip', 'route', 'show', 'default'])).stdout.trim();
  t.equal(route, `default via ${out.gateway} dev eth0`, 'its default route, as `ip route replace` makes it');
  t.equal((await inNs(a.pid, ['busybox', 'ping', '-c1', '-W2', out.gateway], false)).exitCode, 0, 'reaches its gateway');

  // While the container runs (a sharer or a bind mount keeps a namespace): the hook returns once the pair is gone.
  const down = await hook(NET, state('a', 'stopped'));
  t.equal(down.exitCode, 0, down.stderr);
  t.equal((await sh('ip', ['link', 'show', 'dev', out.hostVeth], { reject: false })).exitCode, 1, 'the host side is gone when the hook returns');
  t.equal((await inNs(a.pid, ['ip', 'link', 'show', 'dev', 'eth0'], false)).exitCode, 1, 'and eth0 in the container with it');
  t.equal(await snapshot(dir), baseline, 'nothing left');
  // The detached helpers (the deletion's sender, the nft socket's holder) end by themselves.
  let left = hookProcesses();
  for (let i = 0; i < 100 && left.length; i++) {
    await sleep(50);
    left = hookProcesses();
  }
  t.same(left, [], "no process of the hook's is left");
});

t.test('a request the kernel refuses: one line naming it, nothing left, the container untouched', async (t) => {
  const a = await box(t);
  // The container already has an eth0 of its own (someone put one there).
  await inNs(a.pid, ['ip', 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'other0']);
  const before = await inNs(a.pid, ['ip', '-o', 'link', 'show']);
  const r = await hook([...NET, '--publish', '8080:80'], state('a', 'creating', a.pid));
  t.equal(r.exitCode, 1);
  t.match(r.stderr, /^ocinet-hook: rtnetlink: creating veth ocv[0-9a-f]{10} on ocnat0 \(peer eth0 in the container\): EEXIST \(file already exists\)$/, 'one line: what the kernel refused');
  const logged = JSON.parse(readFileSync(join(dir, 'ocinet.log'), 'utf8').trim().split('\n').pop()!) as { ok: boolean; code: string };
  t.same([logged.ok, logged.code], [false, 'EEXEC'], 'logged as a failed step (EEXEC, CNI code 102), as a failed ip was');
  t.equal((await inNs(a.pid, ['ip', '-o', 'link', 'show'])).stdout, before.stdout, "the container's links as they were");
  t.same(readDb(dir).containers, {}, 'no record');
  t.equal(await snapshot(dir), baseline, 'nothing left');
});

t.test('without libnftables the hook runs the nft program: the same rules, nothing left', async (t) => {
  // A broken libnftables.so.1 first on the library path: dlopen fails, as on a host without the library.
  const libs = join(dir, '..', `native-libs-${process.pid}`);
  mkdirSync(libs, { recursive: true });
  writeFileSync(join(libs, 'libnftables.so.1'), '');
  t.teardown(() => cleanup(libs));
  const env = { LD_LIBRARY_PATH: libs };
  const probe = `const m = { exports: {} }; process.dlopen(m, ${JSON.stringify(join(ROOT, 'dist/bin/native.node'))}); process.stdout.write(String(m.exports.nftRun('', false)));`;
  t.equal((await execa(process.execPath, ['-e', probe], { env, extendEnv: false })).stdout, 'null', 'libnftables cannot be loaded here');
  const run = async (input: string): Promise<HookRun> => {
    const x = await execa(HOOK, NET, { input, env, extendEnv: false, reject: false });
    return { exitCode: x.exitCode ?? 1, stdout: String(x.stdout), stderr: String(x.stderr) };
  };
  const a = await box(t);
  const r = await run(state('a', 'creating', a.pid));
  t.equal(r.exitCode, 0, r.stderr);
  const inet = (await sh('nft', ['list', 'table', 'inet', `ocinet-${sid}`])).stdout;
  t.match(inet, /elements = \{ 10\.231\.0\.0\/24 \}/, "the network's elements, through nft");
  const down = await run(state('a', 'stopped'));
  t.equal(down.exitCode, 0, down.stderr);
  t.equal(await snapshot(dir), baseline, 'nothing left');
});
