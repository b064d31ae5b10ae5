import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BENCHES, runSuite, type SuiteResult } from '../../bench/index.js';

/** The suite in --smoke mode (tiny samples): it completes and writes a well-formed results file. Never asserts a target. */
describe('benchmark suite, smoke mode', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'l2flow-bench-smoke-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('runs every benchmark and writes latest.json with each one', async () => {
    const out = path.join(dir, 'latest.json');
    await runSuite({ names: [], smoke: true, out, markdown: null, log: () => undefined });
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
  }, 180_000);
});
