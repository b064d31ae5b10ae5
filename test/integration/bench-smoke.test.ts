import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BENCHES, type SuiteResult } from '../../bench/index.js';
import { ensureBuilt, ROOT } from '../helpers/process.js';

/**
 * The suite in --smoke mode (tiny samples), run as `npm run bench` runs it (the compiled suite, each benchmark in a
 * process of its own): it completes and writes a well-formed results file. Never asserts a target.
 */
describe('benchmark suite, smoke mode', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'l2flow-bench-smoke-'));
  beforeAll(() => ensureBuilt(), 120_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('runs every benchmark, each in a process of its own, and writes latest.json with each one', async () => {
    const out = path.join(dir, 'latest.json');
    let output = '';
    const code = await new Promise<number | null>((resolve) => {
      const p = spawn(process.execPath, ['dist/bench/index.js', '--smoke', '--out', out], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
      p.stdout.on('data', (d: Buffer) => (output += d.toString()));
      p.stderr.on('data', (d: Buffer) => (output += d.toString()));
      p.on('exit', resolve);
    });
    expect(code, output).toBe(0);
    const r = JSON.parse(readFileSync(out, 'utf8')) as SuiteResult;
    expect(r.smoke).toBe(true);
    expect(r.versions.node).toBe(process.version);
    expect(r.machine.cpus).toBeGreaterThan(0);
    expect(r.benchmarks.map((b) => b.name)).toEqual(BENCHES.map((b) => b.name));
    for (const b of r.benchmarks) {
      expect(b.error, `${b.name}: ${b.error}`).toBeUndefined();
      expect(b.figures.length, b.name).toBeGreaterThan(0);
      for (const f of b.figures) {
        expect(typeof f.value, `${b.name} ${f.name}`).toBe('number');
        if (f.target !== undefined) expect(typeof f.met, `${b.name} ${f.name}`).toBe('boolean');
      }
    }
    const pids = r.benchmarks.map((b) => b.pid);
    expect(new Set(pids).size, 'one process per benchmark').toBe(BENCHES.length);
    // A smoke run is no measurement: the table in BENCHMARKS.md is left alone.
    expect(output).not.toMatch(/table regenerated/);
  }, 240_000);
});
