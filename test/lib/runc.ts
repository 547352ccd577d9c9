/** Real runc containers for tests: busybox bundles from examples/make-bundle.sh, started detached. */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { HOOK, ROOT, sh, sleep, type HookRun } from './env.js';

export class Runc {
  constructor(
    readonly work: string,
    readonly root: string,
    readonly hookArgs: string[],
    /** The hook binary the bundles run: the built one, or one installed by `make install`. */
    readonly hook: string = HOOK,
  ) {}

  /** A bundle whose prestart/poststop hooks run the hook with `"env": []`. */
  async bundle(name: string, env: Record<string, string> = {}, edit?: string): Promise<string> {
    const dir = join(this.work, name);
    await execa(join(ROOT, 'examples/make-bundle.sh'), [dir, this.hook, ...this.hookArgs], { env });
    if (edit) {
      const r = await execa('jq', [edit, join(dir, 'config.json')]);
      writeFileSync(join(dir, 'config.json'), String(r.stdout));
    }
    return dir;
  }

  run(args: string[], reject = true): Promise<HookRun> {
    return sh('runc', ['--root', this.root, ...args], { reject });
  }

  /** Bounded: a broken path must fail the test, not hang it (busybox wget -T crashes). */
  exec(id: string, args: string[]): Promise<HookRun> {
    return this.run(['exec', id, 'busybox', 'timeout', '10', ...args], false);
  }

  async start(id: string, dir: string): Promise<{ exitCode: number; stderr: string }> {
    // A detached container inherits runc's stdio: hand it a file descriptor,
    // not a pipe we would wait on for as long as the container lives.
    const errFile = join(this.work, `${id}.stderr`);
    const fd = openSync(errFile, 'w');
    const child = spawn('runc', ['--root', this.root, 'run', '-d', id], { cwd: dir, stdio: ['ignore', 'ignore', fd] });
    const exitCode = await new Promise<number>((r) => child.once('exit', (c) => r(c ?? 1)));
    closeSync(fd);
    return { exitCode, stderr: readFileSync(errFile, 'utf8') };
  }

  async pid(id: string): Promise<number> {
    return (JSON.parse((await this.run(['state', id])).stdout) as { pid: number }).pid;
  }

  async stop(id: string): Promise<void> {
    await this.run(['kill', id, 'KILL'], false);
    for (let i = 0; i < 50; i++) {
      const s = await this.run(['state', id], false);
      if (s.exitCode !== 0 || s.stdout.includes('"stopped"')) break;
      await sleep(20);
    }
    await this.run(['delete', '--force', id], false);
  }
}
