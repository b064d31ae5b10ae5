/**
 * Diagnostic (not part of the suite): with schedule.onFlag, N flag INSERTs one after another; prints, for the last
 * few, every runtime statement and run event from the INSERT to the run past the sensor.
 * `node dist/bench/diag-onflag.js [N]`.
 */
import { performance } from 'node:perf_hooks';
import { filter } from 'rxjs';
import { trace, installCounters } from './counters.js';
import { startSap, addDaysIso, benchConfig, benchSettings, openDb, startApp, sleep, until, within } from './harness.js';

installCounters();
const N = Number(process.argv[2] ?? 20);
const FIRST = '2041-01-01';
const db = await openDb('diagonflag');
const sap = await startSap();
const app = await startApp(benchConfig(db.uri, sap.url, benchSettings(addDaysIso(FIRST, 1), { schedule: { onFlag: { enabled: true } }, logLevel: process.env.LOG_LEVEL ?? 'warn' })));
await until(() => app.supervisor.isLeader(), 30_000, 'leader');
const past: number[] = [];
for (let i = 0; i < N; i++) {
  const business = addDaysIso(FIRST, i);
  const logical = addDaysIso(business, 1);
  let t0 = 0;
  let left!: () => void;
  let done!: () => void;
  const leftP = new Promise<void>((r) => (left = r));
  const doneP = new Promise<void>((r) => (done = r));
  const show = i >= N - 3;
  const lines: string[] = [];
  const sub = app.supervisor.events$.pipe(filter((e) => e.logicalDate === logical)).subscribe((e) => {
    if (show) lines.push(`${(performance.now() - t0).toFixed(2).padStart(7)}         EVENT ${e.type} ${e.steps.join(',') || e.status}`);
    if (!e.steps.includes('wait_for_l2_full_load') && e.type === 'transition') left();
    if (e.type === 'finished') done();
  });
  trace.on = show;
  trace.items = [];
  t0 = performance.now();
  await db.insertFlag(business);
  await within(leftP, 10_000, 'past');
  past.push(performance.now() - t0);
  await within(doneP, 30_000, 'done');
  trace.on = false;
  sub.unsubscribe();
  if (show) {
    for (const it of trace.items) lines.push(`${(it.start - t0).toFixed(2).padStart(7)} ${(it.end - t0).toFixed(2).padStart(7)} ${it.app.padEnd(13)} ${it.kind.slice(0, 60)}`);
    console.log(lines.sort((a, b) => parseFloat(a) - parseFloat(b)).slice(0, 14).join('\n') + '\n');
  }
  await until(() => app.pool.waitingCount === 0 && app.pool.idleCount === app.pool.totalCount, 10_000, 'pool idle', 2);
  await sleep(20);
}
const s = past.slice(Math.min(5, Math.floor(N / 3))).sort((a, b) => a - b);
console.log('flag INSERT sent → run past the sensor, ms: p50', s[Math.floor(s.length / 2)]!.toFixed(2), 'min', s[0]!.toFixed(2));
await app.stop();
await sap.close();
await db.drop();
