// Units without the kernel: validation, IPAM, rule generation, names, flags.
import t from 'tap';
import { parseSubnet, ipToInt, intToIp, hostRange } from '../core/base/cidr.js';
import { resolveConfig } from '../core/input/config.js';
import { OcinetError } from '../core/base/errors.js';
import { allocate } from '../core/state/ipam.js';
import { checkPortConflicts, formatPort, MAX_RANGE, parsePort, parsePortList, parsePorts } from '../core/firewall/ports.js';
import { publishScript, unpublishScript } from '../core/firewall/iptables/ports.js';
import { parseState, stageFromStatus } from '../core/input/oci.js';
import { bridgeMac, dnatChain, hostVethName, isIfName, shortHash, stateId } from '../core/state/names.js';
import { RestoreScript } from '../core/firewall/iptables/tables.js';
import { emptyDb, findContainer, loadDb, type Db, type NetworkRecord } from '../core/state/store.js';
import { parseArgs } from '../hooks/args.js';
import { addrBytes, defaultRoute, newVeth } from '../core/net/rtnl.js';

const code = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (e) {
    return e instanceof OcinetError ? e.code : 'OTHER';
  }
  return undefined;
};

t.test('cidr', async (t) => {
  t.equal(parseSubnet('10.213.0.0/16').cidr, '10.213.0.0/16');
  t.equal(intToIp(ipToInt('192.168.1.254')), '192.168.1.254');
  t.same(hostRange(parseSubnet('10.0.0.0/29')), { first: ipToInt('10.0.0.2'), last: ipToInt('10.0.0.6') });
  t.throws(() => parseSubnet('10.0.0.1/24'), /host bits set \(did you mean 10\.0\.0\.0\/24\?\)/);
  t.throws(() => parseSubnet('10.0.0.0/31'), /prefix must be \/8 to \/30/);
  t.throws(() => parseSubnet('10.0.0/24'), /not IPv4 CIDR/);
  t.throws(() => ipToInt('1.2.3.256'), /not an IPv4 address/);
});

t.test('state validation accepts runc and crun shapes', async (t) => {
  const runcStart = parseState('{"ociVersion":"1.0.2","id":"abc","status":"creating","pid":42,"bundle":"/b"}');
  t.equal(stageFromStatus(runcStart), 'setup');
  const runcStop = parseState('{"ociVersion":"1.0.2","id":"abc","status":"stopped","bundle":"/b"}');
  t.equal(stageFromStatus(runcStop), 'teardown');
  const crun = parseState('{"ociVersion":"1.0.0","id":"abc","status":"starting","pid":0,"bundle":"/b","root":"/run/crun","x":{}}');
  t.equal(crun.status, 'starting');
  t.throws(() => parseState('{"ociVersion":"1","id":"a/b","status":"creating","bundle":"/"}'), /field 'id': must match pattern/);
  t.throws(() => parseState('{"ociVersion":"1","id":"a","status":"creating","bundle":"/","pid":-1}'), /field 'pid': must be >= 0/);
  t.throws(() => parseState('{"ociVersion":"1","id":"a","status":"creating","bundle":"/","annotations":{"k":1}}'), /field 'annotations.k': must be string/);
  t.throws(() => parseState('[]'), /state: must be object/);
});

t.test('ipam: sequential, static, conflicts, exhaustion', async (t) => {
  const db: Db = emptyDb();
  const net: NetworkRecord = { bridge: 'b0', subnet: '10.0.0.0/29', gateway: '10.0.0.1', createdBridge: true };
  db.networks.b0 = net;
  const add = (id: string, ip?: string): string => {
    const got = allocate(db, net, id, ip);
    db.containers[id] = { id, mode: 'veth', bridge: 'b0', ip: got, ports: [], createdAt: '', setupPid: 1 };
    return got;
  };
  t.equal(add('a'), '10.0.0.2');
  t.equal(add('b'), '10.0.0.3');
  t.equal(add('s', '10.0.0.6'), '10.0.0.6', 'static');
  t.equal(code(() => allocate(db, net, 'x', '10.0.0.6')), 'ECONFLICT');
  t.equal(code(() => allocate(db, net, 'x', '10.0.0.7')), 'EINPUT', 'broadcast');
  t.equal(code(() => allocate(db, net, 'x', '10.0.1.2')), 'EINPUT', 'outside');
  delete db.containers.a;
  t.equal(add('c'), '10.0.0.4', 'continues after the last one, not the released one');
  t.equal(add('d'), '10.0.0.5');
  t.equal(add('e'), '10.0.0.2', 'wraps around to the released address');
  t.equal(code(() => allocate(db, net, 'f')), 'EEXHAUSTED');
});

t.test('ports: parsing and conflicts', async (t) => {
  t.same(parsePort('8080:80', 'x'), { hostPort: 8080, containerPort: 80, proto: 'tcp' });
  t.same(parsePort('53:5353/udp', 'x'), { hostPort: 53, containerPort: 5353, proto: 'udp' });
  t.same(parsePortList('1:2, 3:4/udp', 'x').length, 2);
  t.equal(parsePortList('', 'x').length, 0);
  for (const bad of ['80', ':80', '80:', '0:1', '1:65536', '1:2/sctp', 'a:b', '1:2,']) {
    t.equal(code(() => parsePortList(bad, 'x')), 'EINPUT', bad);
  }
  const db = emptyDb();
  db.containers.o = { id: 'o', mode: 'veth', bridge: 'b', ports: [{ hostPort: 80, containerPort: 80, proto: 'tcp' }], createdAt: '', setupPid: 1 };
  t.equal(code(() => checkPortConflicts([{ hostPort: 80, containerPort: 1, proto: 'tcp' }], db, 'n')), 'ECONFLICT');
  t.equal(code(() => checkPortConflicts([{ hostPort: 80, containerPort: 1, proto: 'udp' }], db, 'n')), undefined, 'udp is another port');
});

t.test('ports: the Docker/netavark syntax, ranges, host addresses, conflicts', async (t) => {
  t.same(parsePorts('127.0.0.1:8080:80', 'x'), [{ hostPort: 8080, containerPort: 80, proto: 'tcp', hostIp: '127.0.0.1' }]);
  t.same(parsePorts(' 192.0.2.1:53:5353/udp ', 'x'), [{ hostPort: 53, containerPort: 5353, proto: 'udp', hostIp: '192.0.2.1' }]);
  t.same(parsePorts('0.0.0.0:8080:80', 'x'), [{ hostPort: 8080, containerPort: 80, proto: 'tcp' }], '0.0.0.0 is every address');
  t.same(parsePorts('8000-8002:9000-9002/udp', 'x'), [
    { hostPort: 8000, containerPort: 9000, proto: 'udp' },
    { hostPort: 8001, containerPort: 9001, proto: 'udp' },
    { hostPort: 8002, containerPort: 9002, proto: 'udp' },
  ]);
  t.same(parsePorts('127.0.0.1:8100-8101:80-81', 'x').map(formatPort), ['127.0.0.1:8100:80/tcp', '127.0.0.1:8101:81/tcp']);
  t.same(parsePorts('7-7:8-8', 'x').map(formatPort), ['7:8/tcp'], 'a range of one');
  t.same(parsePortList('8080:80,127.0.0.1:8081:81,9000-9001:90-91/udp', 'x').map(formatPort), ['8080:80/tcp', '127.0.0.1:8081:81/tcp', '9000:90/udp', '9001:91/udp']);
  t.equal(parsePorts(`1-${MAX_RANGE}:1-${MAX_RANGE}`, 'x').length, MAX_RANGE, `a range of ${MAX_RANGE} ports`);
  const line = (fn: () => unknown): string => {
    try {
      fn();
    } catch (e) {
      return e instanceof OcinetError ? `${e.code} ${e.message}` : 'OTHER';
    }
    return 'no error';
  };
  const bad: [string, RegExp][] = [
    ['8000-8002:9000-9001', /^EINPUT annotation io\.ocinet\.publish: '8000-8002:9000-9001' maps 3 host ports to 2 container ports \(ranges must be of equal length\)$/],
    ['8000-8002:80', /maps 3 host ports to 1 container ports/],
    ['8002-8000:9002-9000', /^EINPUT annotation io\.ocinet\.publish: host port range 8002-8000 in '8002-8000:9002-9000' is reversed$/],
    ['8000-8001:9001-9000', /container port range 9001-9000 in .* is reversed/],
    [`1-${MAX_RANGE + 1}:1-${MAX_RANGE + 1}`, new RegExp(`host port range in '1-${MAX_RANGE + 1}:1-${MAX_RANGE + 1}' has ${MAX_RANGE + 1} ports, more than ${MAX_RANGE}$`)],
    ['example.com:8080:80', /^EINPUT annotation io\.ocinet\.publish: host address 'example\.com' in 'example\.com:8080:80' is not an IPv4 address$/],
    ['[::1]:8080:80', /host address '\[::1\]' .* is not an IPv4 address/],
    ['1.2.3.256:8080:80', /host address '1\.2\.3\.256'/],
    [':8080:80', /host address '' in ':8080:80'/],
    ['0:80', /host port 0 in '0:80' is outside 1-65535/],
    ['65535-65536:1-2', /host port 65536 in .* is outside 1-65535/],
    ['8080:70000/udp', /container port 70000 in '8080:70000\/udp' is outside 1-65535/],
    ['8080:80/sctp', /'8080:80\/sctp' is not \[HOSTIP:\]HOSTPORT\[-END\]:CONTAINERPORT\[-END\]\[\/tcp\|\/udp\]$/],
    ['8080-:80', /is not \[HOSTIP:\]/],
    ['80', /is not \[HOSTIP:\]/],
  ];
  for (const [spec, re] of bad) {
    const l = line(() => parsePortList(spec, 'annotation io.ocinet.publish'));
    t.match(l, re, spec);
    t.notOk(l.includes('\n'), `${spec}: one line`);
  }
  t.match(line(() => parsePort('8000-8001:80-81', '--x')), /^EINPUT --x: '8000-8001:80-81' is a range/);

  const db = emptyDb();
  const rec = (id: string, ports: string): void => {
    db.containers[id] = { id, mode: 'veth', bridge: 'b', ports: parsePortList(ports, 'x'), createdAt: '', setupPid: 1 };
  };
  rec('lo', '127.0.0.1:8080:80');
  rec('any', '9090:80');
  const conflict = (ports: string): string => line(() => checkPortConflicts(parsePortList(ports, 'x'), db, 'n'));
  t.equal(conflict('192.0.2.1:8080:80'), 'no error', 'another host address of the same port');
  t.equal(conflict('127.0.0.1:8080:80/udp'), 'no error', 'another proto');
  t.equal(conflict('127.0.0.1:8080:81'), 'ECONFLICT host port 127.0.0.1:8080/tcp is already published by container lo');
  t.equal(conflict('8080:81'), 'ECONFLICT host port 8080/tcp is already published by container lo (as 127.0.0.1:8080/tcp)', 'a wildcard clashes with a binding');
  t.equal(conflict('127.0.0.1:9090:81'), 'ECONFLICT host port 127.0.0.1:9090/tcp is already published by container any (as 9090/tcp)', 'a binding clashes with a wildcard');
  t.equal(conflict('9089-9091:1-3'), 'ECONFLICT host port 9090/tcp is already published by container any', 'one port of a range');
  t.equal(conflict('127.0.0.1:7000:1,192.0.2.1:7000:2'), 'no error', 'two host addresses in one request');
  t.equal(conflict('127.0.0.1:7000:1,7000:2'), 'ECONFLICT host port 127.0.0.1:7000/tcp is published twice (and as 7000/tcp)');
  t.equal(conflict('7000-7001:1-2,7001:3'), 'ECONFLICT host port 7001/tcp is published twice');
});

t.test('config: ranges and host addresses from flags and annotations; --publish-range holds every port of a range', async (t) => {
  const c = resolveConfig({ publish: ['127.0.0.1:8080-8081:80-81'] }, { 'io.ocinet.publish': '192.0.2.1:9000:90,9001-9002:91-92/udp' }, {});
  t.same(c.ports.map(formatPort), ['127.0.0.1:8080:80/tcp', '127.0.0.1:8081:81/tcp', '192.0.2.1:9000:90/tcp', '9001:91/udp', '9002:92/udp']);
  t.throws(() => resolveConfig({ publishRange: '9000-9001' }, { 'io.ocinet.publish': '9000-9002:90-92' }, {}), /annotation io\.ocinet\.publish: host port 9002 is outside the range the hook entry allows \(9000-9001; --publish-range\)/);
  t.throws(() => resolveConfig({}, { 'io.ocinet.publish': '1023-1024:1-2' }, {}), /host port 1023 is outside/);
  t.throws(() => resolveConfig({ publish: ['8000-8001:80'] }, {}, {}), /^--publish: '8000-8001:80' maps 2 host ports to 1 container ports/);
  t.throws(() => resolveConfig({}, { 'io.ocinet.publish': '2000-2064:2000-2064' }, {}), /annotation io\.ocinet\.publish: 65 ports, more than 64/, 'a range counts each port');
});

t.test('state records: host addresses of mappings are checked', async (t) => {
  const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(`${tmpdir()}/ocinet-unit-`);
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const base = { mode: 'veth', bridge: 'b', createdAt: '', setupPid: 1 };
  writeFileSync(`${dir}/state.json`, JSON.stringify({
    version: 1, networks: {},
    containers: {
      good: { id: 'good', ...base, ports: [{ hostPort: 1, containerPort: 2, proto: 'tcp', hostIp: '127.0.0.1' }] },
      bad: { id: 'bad', ...base, ports: [{ hostPort: 1, containerPort: 2, proto: 'tcp', hostIp: 'x' }] },
    },
  }));
  const warnings: string[] = [];
  const db = loadDb(dir, warnings);
  t.same(db.containers.good!.ports, [{ hostPort: 1, containerPort: 2, proto: 'tcp', hostIp: '127.0.0.1' }]);
  t.equal(db.containers.bad!.damaged, "field 'ports' holds a bad mapping");
  t.equal(warnings.length, 1);
});

t.test('rule generation', async (t) => {
  const chain = dnatChain('web-1');
  const s = publishScript({ chain, tag: 'web-1' }, '10.0.0.2', '10.0.0.0/24', [{ hostPort: 8080, containerPort: 80, proto: 'tcp' }]).text();
  t.equal(
    s,
    `*nat
:${chain} - [0:0]
-A ${chain} -s 10.0.0.0/24 -p tcp -m tcp --dport 8080 -m comment --comment ocinet:web-1 -j MARK --set-xmark 0x2000/0x2000
-A ${chain} -s 127.0.0.0/8 -p tcp -m tcp --dport 8080 -m comment --comment ocinet:web-1 -j MARK --set-xmark 0x2000/0x2000
-A ${chain} -p tcp -m tcp --dport 8080 -m comment --comment ocinet:web-1 -j DNAT --to-destination 10.0.0.2:80
-A OCINET-DNAT -m comment --comment ocinet:web-1 -j ${chain}
COMMIT
`,
  );
  const ip = publishScript({ chain, tag: 'web-1' }, '10.0.0.2', '10.0.0.0/24', [{ hostPort: 8080, containerPort: 80, proto: 'udp', hostIp: '127.0.0.1' }], false).text();
  t.equal(
    ip,
    `*nat
:${chain} - [0:0]
-A ${chain} -s 10.0.0.0/24 -d 127.0.0.1/32 -p udp -m udp --dport 8080 -m comment --comment ocinet:web-1 -j MARK --set-xmark 0x2000/0x2000
-A ${chain} -s 127.0.0.0/8 -d 127.0.0.1/32 -p udp -m udp --dport 8080 -m comment --comment ocinet:web-1 -j MARK --set-xmark 0x2000/0x2000
-A ${chain} -d 127.0.0.1/32 -p udp -m udp --dport 8080 -m comment --comment ocinet:web-1 -j DNAT --to-destination 10.0.0.2:80
COMMIT
`,
    'a host address binding; a refill adds no jump',
  );
  t.equal(unpublishScript({ chain, tag: 'web-1' }).text(), `*nat\n-D OCINET-DNAT -m comment --comment ocinet:web-1 -j ${chain}\n-F ${chain}\n-X ${chain}\nCOMMIT\n`);
  t.equal(new RestoreScript().append({ table: 'filter', chain: 'C', args: ['-m', 'comment', '--comment', 'two words'] }).text(), '*filter\n-A C -m comment --comment "two words"\nCOMMIT\n');
  t.throws(() => new RestoreScript().append({ table: 'nat', chain: 'C', args: ['a"b'] }), /cannot be quoted/);
  t.equal(new RestoreScript().text(), '');
});

t.test('names are stable, short and valid', async (t) => {
  t.equal(hostVethName('abc'), hostVethName('abc'));
  t.not(hostVethName('abc'), hostVethName('abd'));
  t.ok(isIfName(hostVethName('x'.repeat(200))));
  t.ok(hostVethName('a').length <= 15);
  t.ok(dnatChain('a').length <= 28);
  t.match(bridgeMac('ocinet0'), /^02(:[0-9a-f]{2}){5}$/);
  t.equal(shortHash('', 16).length, 16);
  t.notOk(isIfName('1abc'));
  t.notOk(isIfName('a'.repeat(16)));
});

t.test('config: flags, annotations, precedence', async (t) => {
  const c = resolveConfig({ publish: ['8080:80'], ip: '10.213.0.9' }, { 'io.ocinet.publish': '9090:90/udp', 'io.ocinet.ip': '10.213.0.7' }, {});
  t.equal(c.ip, '10.213.0.7', 'annotation wins over --ip');
  t.same(c.ports.map((p) => p.hostPort), [8080, 9090], 'ports add up');
  t.same(c.requested, { ports: true, ip: true });
  t.equal(c.stateDir, '/run/ocinet');
  t.equal(resolveConfig({}, {}, { OCINET_STATE_DIR: '/run/ocinet-x' }).stateDir, '/run/ocinet-x');
  t.equal(resolveConfig({ stateDir: '/run/ocinet-y' }, {}, { OCINET_STATE_DIR: '/run/ocinet-x' }).stateDir, '/run/ocinet-y', 'flag wins over env');
  t.equal(resolveConfig({ log: 'none' }, {}, {}).logFile, null);
  t.throws(() => resolveConfig({ mtu: '67' }, {}, {}), /--mtu '67'/);
  t.throws(() => resolveConfig({}, { 'io.ocinet.nope': 'x' }, {}), /unknown annotation 'io\.ocinet\.nope'/);
});

t.test('argv parser', async (t) => {
  const spec = { '--a': { key: 'a', kind: 'string' as const }, '--l': { key: 'l', kind: 'list' as const }, '--b': { key: 'b', kind: 'bool' as const } };
  t.same(parseArgs(['x', '--a=1', '--l', '2', '--l=3', '--b', '--', '--z'], spec), { flags: { a: '1', l: ['2', '3'], b: true }, positional: ['x', '--z'] });
  t.throws(() => parseArgs(['--a'], spec), /flag --a needs a value/);
  t.throws(() => parseArgs(['--b=1'], spec), /takes no value/);
  t.throws(() => parseArgs(['--q'], spec), /unknown flag --q/);
});

t.test('container lookup by unique prefix', async (t) => {
  const db = emptyDb();
  for (const id of ['abc123', 'abd456']) db.containers[id] = { id, mode: 'veth', bridge: 'b', ports: [], createdAt: '', setupPid: 1 };
  t.equal(findContainer(db, 'abc', '00000000').id, 'abc123');
  t.throws(() => findContainer(db, 'ab', '00000000'), /ambiguous/);
  t.throws(() => findContainer(db, 'zz', '00000000'), /no container 'zz'/);
});

t.test('ipvs: parameters, restore, cleanup validation', async (t) => {
  const { parseParameters, parseRestore, parseCleanup } = await import('../core/input/ipvs-rules.js');
  t.same(parseParameters('--add-service --tcp-service 172.17.0.7:80 --scheduler rr --persistent 3000').argv, ['-A', '-t', '172.17.0.7:80', '-s', 'rr', '-p', '3000']);
  t.same(parseParameters('--add-server --tcp-service 172.17.0.7:80 --real-server 172.17.0.4:80 --weight 100').argv, ['-a', '-t', '172.17.0.7:80', '-r', '172.17.0.4:80', '-w', '100', '-m'], 'single add-server defaults to NAT');
  t.same(parseParameters('--set 100 100 200').argv, ['--set', '100', '100', '200']);
  t.same(parseParameters('--list').argv, ['-L']);
  const r = parseRestore('-A -t 10.10.11.12:100 -s rr -p 3000\n-a -t 10.10.11.12:100 -r 172.16.0.1:80 -m\n-a -t 10.10.11.12:100 -r 172.16.0.1:81\n');
  t.equal(r.rules.length, 3);
  t.match(r.warnings[0], /line 3: no forwarding method/);
  const bad: [string, RegExp][] = [
    ['--add-service --tcp-service 1.2.3.4:0', /port 0/],
    ['--add-service --tcp-service 1.2.3.4:65536', /port 65536/],
    ['--add-service --tcp-service 1.2.3.400:80', /IPv4 ip:port/],
    ['--add-service --tcp-service 1.2.3.4:80 --scheduler xx', /scheduler 'xx'/],
    ['--add-service --tcp-service 1.2.3.4:80 --persistent 0', /--persistent takes a whole number from 1 to 2678400/],
    ['--add-service --tcp-service 1.2.3.4:80 --persistent 2678401', /2678401/],
    ['--add-server --tcp-service 1.2.3.4:80 --real-server 1.2.3.5:80 --weight 65536', /65536/],
    ['--set 1 2 1296001', /1296001/],
    ['--set 1 2', /three values/],
    ['--add-service --tcp-service 1.2.3.4:80 --ops', /option '--ops' is not allowed/],
    ['--add-service --scheduler rr', /needs --tcp-service or --udp-service/],
    ['--add-server --tcp-service 1.2.3.4:80', /needs --real-server/],
    ['--zero', /'--zero' is not an ipvsadm command/],
    [';reboot', /';reboot' is not an ipvsadm command/],
  ];
  for (const [p, re] of bad) t.throws(() => parseParameters(p), re, p);
  t.throws(() => parseRestore(''), /restore input is empty/);
  t.throws(() => parseRestore('-A -t 1.2.3.4:80\n-D -t 1.2.3.4:80'), /line 2: only -A and -a lines/);
  t.throws(() => parseRestore('-A -t 1.2.3.4:80\n-a -t 1.2.3.4:80 -r x'), /line 2: .*-r needs IPv4 ip:port/);
  t.same(parseCleanup('--orig-dst 172.17.0.4 --protonum tcp'), { origDst: '172.17.0.4', protonum: 'tcp' });
  t.throws(() => parseCleanup('--orig-dst 172.17.0.4 --protonum sctp'), /tcp or udp/);
  t.throws(() => parseCleanup('--orig-dst 172.17.0.4'), /needs --orig-dst IP and --protonum/);
});

t.test('process identity: start time from /proc/PID/stat, even with spaces and parentheses in comm', async (t) => {
  const { sameProcess, startTime } = await import('../core/base/proc.js');
  const mine = startTime(process.pid);
  t.type(mine, 'number');
  t.ok(sameProcess(process.pid, mine!), 'this process is itself');
  t.notOk(sameProcess(process.pid, mine! + 1), 'another start time is another process');
  t.equal(startTime(4194300), null, 'no such pid');
  t.equal(startTime(0), null);
  const { spawn } = await import('node:child_process');
  const { mkdtempSync, rmSync, symlinkSync } = await import('node:fs');
  // A program whose name (comm) holds ") (": field counting must start after the last ')'.
  const dir = mkdtempSync('/tmp/ocinet-comm-');
  symlinkSync('/bin/sleep', `${dir}/a) (b c`);
  const p = spawn(`${dir}/a) (b c`, ['5'], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 100));
  const st = startTime(p.pid!);
  t.type(st, 'number');
  t.ok(st! >= mine!, 'a later process started later');
  p.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

t.test('state records: checked on load, damaged ones kept by name, prototype ids are plain keys', async (t) => {
  const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
  const { loadDb, saveDb, emptyDb: empty } = await import('../core/state/store.js');
  const dir = mkdtempSync('/tmp/ocinet-store-');
  const db = empty();
  for (const id of ['__proto__', 'constructor']) db.containers[id] = { id, mode: 'veth', bridge: 'b0', ip: '10.0.0.2', ports: [], createdAt: '', setupPid: 1 };
  saveDb(dir, db);
  t.same(Object.keys(loadDb(dir).containers).sort(), ['__proto__', 'constructor']);
  const raw = {
    version: 1, networks: {},
    containers: {
      ok: { id: 'ok', mode: 'veth', bridge: 'b0', ip: '10.0.0.2', createdAt: '', setupPid: 1 },
      bad: { id: 'bad', mode: 'veth', bridge: 'b0', ip: '10.0.0.300', ports: [], createdAt: '', setupPid: 1 },
    },
  };
  writeFileSync(`${dir}/state.json`, JSON.stringify(raw));
  const warnings: string[] = [];
  const got = loadDb(dir, warnings);
  t.same(got.containers.ok?.ports, [], 'a missing ports field reads as none');
  t.match(got.containers.bad?.damaged, /field 'ip': "10\.0\.0\.300" is not an IPv4 address/);
  t.equal(got.containers.bad?.ip, undefined, 'no address is trusted from a damaged record');
  t.equal(got.containers.bad?.hostVeth, hostVethName('bad', stateId(dir)), "kept by its veth name in this state dir");
  t.equal(got.containers.bad?.chain, dnatChain('bad', stateId(dir)), 'and its ports chain');
  t.equal(warnings.length, 1);
  writeFileSync(`${dir}/state.json`, '{"version":1,"containers":{');
  t.equal(code(() => loadDb(dir)), 'EDAMAGED');
  writeFileSync(`${dir}/state.json`, '[]');
  t.equal(code(() => loadDb(dir)), 'EDAMAGED');
  rmSync(dir, { recursive: true, force: true });
});

t.test('rtnetlink messages as ip builds them', async (t) => {
  t.equal(addrBytes('10.213.0.2').toString('hex'), '0ad50002');
  t.equal(addrBytes('2001:db8:9::1').toString('hex'), '20010db8000900000000000000000001');
  t.equal(addrBytes('fd00::').toString('hex'), 'fd000000000000000000000000000000');
  t.equal(addrBytes('2001:db8:0:1:2:3:4:5').toString('hex'), '20010db8000000010002000300040005');
  // `ip route replace default via 10.213.0.1 dev IF` (strace of ip 6.1): rtmsg, then RTA_GATEWAY, RTA_OIF.
  const route = defaultRoute(7, '10.213.0.1');
  t.equal(route.readUInt32LE(0), route.length, 'nlmsg_len is the whole message');
  t.equal(route.readUInt16LE(4), 24, 'RTM_NEWROUTE');
  t.equal(route.readUInt16LE(6), 0x500, 'NLM_F_CREATE | NLM_F_REPLACE');
  t.equal(route.subarray(16, 28).toString('hex'), '02000000fe03000100000000', 'rtmsg: inet, main table, proto boot, unicast');
  t.equal(route.subarray(28).toString('hex'), '080005000ad50001' + '0800040007000000', 'gateway, then the interface');
  // Every attribute is 4-byte aligned: the veth's message parses back to the lengths it claims.
  const veth = newVeth({ name: 'ocv0123456789', mac: '02:00:00:00:00:01', mtu: 1500, master: 3, peer: 'eth0', peerMac: '02:00:00:00:00:02', nsFd: 5 });
  t.equal(veth.readUInt32LE(0), veth.length);
  const lens: number[] = [];
  for (let at = 32; at < veth.length; at += (veth.readUInt16LE(at) + 3) & ~3) lens.push(veth.readUInt16LE(at + 2));
  t.same(lens, [3, 1, 4, 10, 18], 'IFLA_IFNAME, IFLA_ADDRESS, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, in that order');
});
