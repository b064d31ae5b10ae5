/**
 * Diagnostic (not part of the suite): N full runs one after another, each fired by its flag INSERT once parked;
 * prints per-run statement counts by kind and connection and the mean time from the INSERT to each transition.
 * `node dist/bench/diag-run.js [N]`.
 */
import { performance } from 'node:perf_hooks';
import { filter } from 'rxjs';
import { trace, installCounters, snapshot, diff, perRun, type QueryCounts } from './counters.js';
import { startSap, addDaysIso, benchConfig, benchSettings, openDb, startApp, sleep, within } from './harness.js';
import { createRun } from '../src/runtime/run-store.js';

installCounters();
const N = Number(process.argv[2] ?? 30);
const db = await openDb('diag');
const sap = await startSap();
const app = await startApp(benchConfig(db.uri, sap.url, benchSettings('2021-01-02', { logLevel: process.env.LOG_LEVEL ?? 'info' })));
const runs: QueryCounts[] = [];
const fired: QueryCounts[] = [];
const marks = new Map<string, number[]>();
/** This process's CPU (user + system) from the flag INSERT to the run's end, per run. */
const cpuMs: number[] = [];
for (let i = 0; i < N; i++) {
  const businessDate = addDaysIso('2021-01-01', i);
  const logicalDate = addDaysIso(businessDate, 1);
  const before = snapshot();
  let t0 = 0;
  let parked!: () => void;
  let done!: (s: string) => void;
  const parkedP = new Promise<void>((r) => (parked = r));
  const doneP = new Promise<string>((r) => (done = r));
  const sub = app.supervisor.events$.pipe(filter((e) => e.logicalDate === logicalDate)).subscribe((e) => {
    if (trace.on) console.log(`${(performance.now() - t0).toFixed(2).padStart(7)} EVENT ${e.type} ${e.steps.join(',') || e.status}`);
    const key = `${e.type}:${e.steps.join(',') || e.status}`;
    if (t0) (marks.get(key) ?? marks.set(key, []).get(key)!).push(performance.now() - t0);
    if (e.steps.length === 1 && e.steps[0] === 'wait_for_l2_full_load') parked();
    if (e.type === 'finished') done(e.status);
  });
  await createRun(app.pool, { workflowId: app.config.workflowId, logicalDate, businessDate, triggeredBy: 'manual' });
  await parkedP;
  await sleep(30);
  const atFire = snapshot();
  const cpu0 = process.cpuUsage();
  t0 = performance.now();
  if (i === N - 1) { trace.on = true; trace.items = []; }
  await db.insertFlag(businessDate);
  const status = await within(doneP, 30_000, 'run');
  const cpu = process.cpuUsage(cpu0);
  if (i >= Math.min(5, Math.floor(N / 3))) cpuMs.push((cpu.user + cpu.system) / 1000);
  (marks.get('FINISHED') ?? marks.set('FINISHED', []).get('FINISHED')!).push(performance.now() - t0);
  sub.unsubscribe();
  if (trace.on) {
    trace.on = false;
    await sleep(20);
    for (const it of trace.items) console.log(`${(it.start - t0).toFixed(2).padStart(7)} ${(it.end - t0).toFixed(2).padStart(7)} ${(it.end - it.start).toFixed(2).padStart(6)} ${it.app.padEnd(13)} ${it.kind.slice(0, 70)}`);
  }
  if (status !== 'success') throw new Error(`run ${logicalDate} ${status}`);
  await sleep(20);
  const after = snapshot();
  runs.push(diff(before, after));
  fired.push(diff(atFire, after));
  await sleep(20);
}
const skip = Math.min(5, Math.floor(N / 3));
console.log('per run (create → success), excluding warm-up', JSON.stringify(perRun(runs.slice(skip)), null, 1));
console.log('per run (flag INSERT → success)', JSON.stringify(perRun(fired.slice(skip)), null, 1));
const med = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return Math.round(s[Math.floor(s.length / 2)]! * 100) / 100; };
for (const [k, v] of [...marks].sort((a, b) => med(a[1]) - med(b[1]))) console.log(k.padEnd(70), med(v.slice(skip)));
console.log('node CPU per run (flag INSERT → finished), ms: median', med(cpuMs), 'mean', Math.round((cpuMs.reduce((a, b) => a + b, 0) / cpuMs.length) * 100) / 100);
await app.stop();
await sap.close();
await db.drop();
