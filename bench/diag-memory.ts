/**
 * Diagnostic (not part of the suite): what a parked run costs in memory. Starts the runtime with nothing to do, takes a
 * heap snapshot, then parks N runs in wait_for_l2_full_load (as the `many` benchmark does) and takes another; prints
 * the heap and RSS growth per run and the object kinds (V8 constructor names) that grew most, by retained self size.
 * `node --expose-gc dist/bench/diag-memory.js [N]` (default 1000).
 */
import { readFileSync, rmSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import v8 from 'node:v8';
import { createRuns } from '../src/runtime/run-store.js';
import { FLAG_SENSOR } from './observers.js';
import { addDaysIso, benchConfig, benchSettings, openDb, sleep, startApp, startSap, until } from './harness.js';

const N = Number(process.argv[2] ?? 1000);
const FIRST_BUSINESS = '2041-01-01';

interface Census {
  count: Map<string, number>;
  size: Map<string, number>;
}

/** Self size and count per constructor (objects), or per node type (strings, closures, arrays …). */
function census(file: string): Census {
  const snap = JSON.parse(readFileSync(file, 'utf8')) as {
    snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
    nodes: number[];
    strings: string[];
  };
  const fields = snap.snapshot.meta.node_fields;
  const types = snap.snapshot.meta.node_types[0];
  const width = fields.length;
  const [iType, iName, iSize] = ['type', 'name', 'self_size'].map((f) => fields.indexOf(f)) as [number, number, number];
  const count = new Map<string, number>();
  const size = new Map<string, number>();
  for (let i = 0; i < snap.nodes.length; i += width) {
    const type = types[snap.nodes[i + iType]!]!;
    const key = type === 'object' || type === 'closure' ? `${type === 'closure' ? 'closure ' : ''}${snap.strings[snap.nodes[i + iName]!]}` : `(${type})`;
    count.set(key, (count.get(key) ?? 0) + 1);
    size.set(key, (size.get(key) ?? 0) + snap.nodes[i + iSize]!);
  }
  return { count, size };
}

function snapshot(dir: string, name: string): Census {
  global.gc?.();
  const file = v8.writeHeapSnapshot(path.join(dir, `${name}.heapsnapshot`));
  try {
    return census(file);
  } finally {
    rmSync(file, { force: true });
  }
}

const dir = mkdtempSync(path.join(os.tmpdir(), 'l2flow-diag-memory-'));
const db = await openDb('diagmemory');
const sap = await startSap();
const config = benchConfig(db.uri, sap.url, benchSettings(addDaysIso(FIRST_BUSINESS, 1), { workflow: { maxActiveRuns: N }, pokeIntervalSeconds: 60 }));
const parked = new Set<string>();
const app = await startApp(config, {
  beforeStart: (a) => {
    a.supervisor.events$.subscribe((e) => {
      if (e.steps.length === 1 && e.steps[0] === FLAG_SENSOR) parked.add(e.runId);
    });
  },
});
await sleep(1000);
global.gc?.();
const before = process.memoryUsage();
const empty = process.env.SNAPSHOTS === '0' ? { count: new Map(), size: new Map() } : snapshot(dir, 'empty');
await createRuns(db.pool, { workflowId: config.workflowId, dates: Array.from({ length: N }, (_, i) => addDaysIso(FIRST_BUSINESS, i + 1)), triggeredBy: 'backfill' });
await until(() => parked.size === N && app.pool.idleCount === app.pool.totalCount, 180_000, `${N} runs parked`, 50);
await sleep(1500); // the last snapshot writes and check records
global.gc?.();
const after = process.memoryUsage();
for (const sp of v8.getHeapSpaceStatistics()) console.log(`  ${sp.space_name.padEnd(26)} size ${(sp.space_size / 2 ** 20).toFixed(1).padStart(6)} MiB, used ${(sp.space_used_size / 2 ** 20).toFixed(1).padStart(6)} MiB, physical ${(sp.physical_space_size / 2 ** 20).toFixed(1).padStart(6)} MiB`);
const full = process.env.SNAPSHOTS === '0' ? { count: new Map(), size: new Map() } : snapshot(dir, 'parked');
const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
console.log(`${N} runs parked (gc ${global.gc ? 'forced' : 'not exposed: run with --expose-gc'}):`);
for (const k of ['rss', 'heapTotal', 'heapUsed', 'external'] as const) {
  console.log(`  ${k.padEnd(10)} ${mib(before[k]).padStart(10)} → ${mib(after[k]).padStart(10)}   ${(((after[k] - before[k]) / N) / 1024).toFixed(1)} KiB a run`);
}
const grown = [...full.size.keys()]
  .map((k) => ({ k, bytes: (full.size.get(k) ?? 0) - (empty.size.get(k) ?? 0), n: (full.count.get(k) ?? 0) - (empty.count.get(k) ?? 0) }))
  .sort((a, b) => b.bytes - a.bytes)
  .slice(0, 30);
console.log('grown most (self size; per run):');
for (const g of grown) console.log(`  ${g.k.slice(0, 48).padEnd(48)} ${(g.bytes / 1024).toFixed(0).padStart(7)} KiB  ${(g.n / N).toFixed(1).padStart(6)} objects  ${(g.bytes / N).toFixed(0).padStart(6)} B`);
await app.stop();
await sap.close();
await db.drop();
rmSync(dir, { recursive: true, force: true });
